//! Forged packets: raw IPv4 sockets that send a transport header and payload the test builds,
//! from any address the namespace holds (the kernel adds the IP header).

use std::net::{Ipv4Addr, SocketAddr};

/// A raw IPv4 socket for `proto`, bound to `src`. Call it on a thread inside the namespace that
/// holds `src` (`NetNs::run`).
pub fn socket(src: &str, proto: socket2::Protocol) -> socket2::Socket {
    let src: Ipv4Addr = src.parse().expect("an IPv4 source");
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(proto))
        .expect("a raw socket (needs CAP_NET_RAW)");
    s.bind(&SocketAddr::new(src.into(), 0).into())
        .expect("bind the raw socket to its source");
    s
}

/// Sends `l4` (transport header and payload) to `dst` through a [`socket`].
pub fn send(s: &socket2::Socket, dst: &str, l4: &[u8]) {
    let dst: SocketAddr = format!("{dst}:0").parse().expect("an IPv4 destination");
    s.send_to(l4, &dst.into()).expect("send a raw packet");
}
