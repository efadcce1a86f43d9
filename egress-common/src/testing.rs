//! Frame builders for tests of the parser (host) and of the classifier (`BPF_PROG_TEST_RUN`).
//! Checksums are left zero: neither the parser nor the classifier reads them.
extern crate std;

use std::{net::IpAddr, vec, vec::Vec};

use crate::packet::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, TCP_SYN};

/// A frame to build; start from [`Packet::tcp`] or [`Packet::udp`] and adjust fields.
#[derive(Clone, Debug)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// TCP sequence number.
    pub seq: u32,
    /// In-band 802.1Q tags before the IP header.
    pub vlan_tags: usize,
    /// Fragment offset in 8-byte units (IPv4 header, or an IPv6 fragment header).
    pub frag_offset: u16,
    pub more_fragments: bool,
    /// IPv6 extension header types (0, 43, 44, 60, 51, ...) inserted in order before the
    /// transport header. A fragment header (44) takes `frag_offset`/`more_fragments`.
    pub v6_ext: Vec<u8>,
    /// Bytes of transport header kept (`None`: all of it); models tiny fragments.
    pub transport_len: Option<usize>,
    /// Payload length (filled with 0xab) when `payload_bytes` is `None`.
    pub payload: usize,
    /// The payload itself (a DNS message, say).
    pub payload_bytes: Option<Vec<u8>>,
}

impl Packet {
    /// A TCP SYN from `src` to `dst:dport`.
    pub fn tcp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            src,
            dst,
            proto: IPPROTO_TCP,
            sport: 40_000,
            dport,
            tcp_flags: TCP_SYN,
            seq: 1,
            vlan_tags: 0,
            frag_offset: 0,
            more_fragments: false,
            v6_ext: Vec::new(),
            transport_len: None,
            payload: 0,
            payload_bytes: None,
        }
    }

    /// A UDP datagram carrying `payload` from `src:sport` to `dst:dport`.
    pub fn udp_with(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: Vec<u8>) -> Self {
        Self {
            sport,
            payload_bytes: Some(payload),
            ..Self::udp(src, dst, dport)
        }
    }

    /// A UDP datagram from `src` to `dst:dport`.
    pub fn udp(src: IpAddr, dst: IpAddr, dport: u16) -> Self {
        Self {
            proto: IPPROTO_UDP,
            tcp_flags: 0,
            payload: 16,
            ..Self::tcp(src, dst, dport)
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        for _ in 0..self.vlan_tags {
            f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        let mut l4 = self.transport();
        match &self.payload_bytes {
            Some(bytes) => l4.extend_from_slice(bytes),
            None => l4.resize(l4.len() + self.payload, 0xab),
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let total = (20 + l4.len()) as u16;
                let frag = (u16::from(self.more_fragments) << 13) | self.frag_offset;
                f.extend_from_slice(&[0x45, 0]);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&frag.to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ext = Vec::new();
                for (i, &kind) in self.v6_ext.iter().enumerate() {
                    let next = self.v6_ext.get(i + 1).copied().unwrap_or(self.proto);
                    match kind {
                        44 => {
                            let fo = (self.frag_offset << 3) | u16::from(self.more_fragments);
                            ext.extend_from_slice(&[next, 0]);
                            ext.extend_from_slice(&fo.to_be_bytes());
                            ext.extend_from_slice(&[0, 0, 0, 7]);
                        }
                        // AH: length field 1 => (1 + 2) * 4 = 12 bytes.
                        51 => {
                            ext.extend_from_slice(&[next, 1]);
                            ext.extend_from_slice(&[0; 10]);
                        }
                        // Generic layout, length 1 => 16 bytes: a PadN option, then bytes
                        // that look like ports 8080 -> 80 where a parser that ignored the
                        // length field would read the transport header.
                        _ => {
                            ext.extend_from_slice(&[next, 1]);
                            ext.extend_from_slice(&[1, 12, 0, 0, 0, 0]);
                            ext.extend_from_slice(&[0x1f, 0x90, 0x00, 0x50, 0, 0, 0, 0]);
                        }
                    }
                }
                let first = self.v6_ext.first().copied().unwrap_or(self.proto);
                let payload_len = (ext.len() + l4.len()) as u16;
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.extend_from_slice(&[first, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend_from_slice(&ext);
            }
            _ => panic!("source and destination must be of one family"),
        }
        f.extend_from_slice(&l4);
        f
    }

    fn transport(&self) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&self.sport.to_be_bytes());
        t.extend_from_slice(&self.dport.to_be_bytes());
        match self.proto {
            IPPROTO_TCP => {
                t.extend_from_slice(&self.seq.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0, 0x50, self.tcp_flags]);
                t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            }
            IPPROTO_UDP => {
                let len = self.payload_bytes.as_ref().map_or(self.payload, Vec::len);
                t.extend_from_slice(&(8 + len as u16).to_be_bytes());
            }
            _ => {}
        }
        if self.proto == IPPROTO_UDP {
            t.extend_from_slice(&[0, 0]);
        }
        if let Some(n) = self.transport_len {
            t.truncate(n);
        }
        t
    }
}

/// A TLS ClientHello to build: the defaults make one a TLS 1.3 or 1.2 server (OpenSSL, nginx)
/// answers with its ServerHello (x25519 key share, AES-GCM suites, ECDSA and RSA-PSS
/// signatures).
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// The `server_name` (`None`: no extension).
    pub sni: Option<Vec<u8>>,
    /// Extra bytes in a `padding` extension (RFC 7685), placed before `server_name` unless
    /// `sni_first`: a large value puts the name past the first segment.
    pub padding: usize,
    /// `server_name` first instead of last.
    pub sni_first: bool,
    /// A GREASE extension (RFC 8701) at the front.
    pub grease: bool,
    /// An `encrypted_client_hello` extension.
    pub ech: bool,
    /// Session id bytes (0..=32).
    pub session_id: usize,
    /// The key share's bytes (32 for x25519).
    pub key_share: [u8; 32],
}

impl ClientHello {
    pub fn new(name: &str) -> Self {
        Self {
            sni: Some(name.as_bytes().to_vec()),
            padding: 0,
            sni_first: false,
            grease: false,
            ech: false,
            session_id: 32,
            key_share: [0x42; 32],
        }
    }

    /// The record: header, handshake header, body.
    pub fn build(&self) -> Vec<u8> {
        fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
            out.extend_from_slice(&kind.to_be_bytes());
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        let mut exts = Vec::new();
        if self.grease {
            ext(&mut exts, 0x0a0a, &[]);
        }
        let sni = self.sni.as_ref().map(|n| {
            let mut b = Vec::new();
            b.extend_from_slice(&(n.len() as u16 + 3).to_be_bytes());
            b.push(0);
            b.extend_from_slice(&(n.len() as u16).to_be_bytes());
            b.extend_from_slice(n);
            b
        });
        if self.sni_first
            && let Some(b) = &sni
        {
            ext(&mut exts, 0, b);
        }
        // TLS 1.3 and 1.2 (nginx before 1.23.4 enables only up to 1.2 by default).
        ext(&mut exts, 0x002b, &[4, 3, 4, 3, 3]);
        ext(&mut exts, 0x000b, &[1, 0]);
        ext(&mut exts, 0x000a, &[0, 2, 0, 0x1d]);
        ext(&mut exts, 0x000d, &[0, 4, 4, 3, 8, 4]);
        let mut ks = vec![0, 36, 0, 0x1d, 0, 32];
        ks.extend_from_slice(&self.key_share);
        ext(&mut exts, 0x0033, &ks);
        ext(&mut exts, 0x002d, &[1, 1]);
        if self.ech {
            ext(&mut exts, crate::tls::EXT_ECH, &[0; 40]);
        }
        if self.padding > 0 {
            ext(&mut exts, 0x0015, &vec![0; self.padding]);
        }
        if !self.sni_first
            && let Some(b) = &sni
        {
            ext(&mut exts, 0, b);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x11; 32]);
        body.push(self.session_id as u8);
        body.extend_from_slice(&vec![0x22; self.session_id]);
        let suites = [0x1301u16, 0x1302, 0x1303, 0xc02b, 0xc02f];
        body.extend_from_slice(&(suites.len() as u16 * 2).to_be_bytes());
        for s in suites {
            body.extend_from_slice(&s.to_be_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }
}
