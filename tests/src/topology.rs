//! The test network: the client and server addresses every fixture uses, `ip` to parse them, and
//! `Topology`, two namespaces joined by a veth pair with those addresses assigned and both ends
//! up, plus client-side TCP and UDP probes.

use std::{
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{NetNs, sh, unique};

/// The client's address on the veth.
pub const CLIENT_V4: &str = "198.18.0.1";
/// A server address the test policies allow.
pub const ALLOWED_V4: &str = "198.18.0.2";
/// A server address no test policy allows.
pub const DENIED_V4: &str = "198.18.0.3";
pub const CLIENT_V6: &str = "2001:db8::1";
pub const ALLOWED_V6: &str = "2001:db8::2";
pub const DENIED_V6: &str = "2001:db8::3";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// Two namespaces joined by a veth pair: the client side carries egress, the server side holds
/// an allowed and a denied address of each family.
pub struct Topology {
    pub client: NetNs,
    pub server: NetNs,
    /// The client's interface, where egress attaches.
    pub iface: String,
    /// The server's end of the veth.
    pub peer: String,
}

impl Topology {
    pub fn new() -> anyhow::Result<Self> {
        let id = unique("e");
        let client = NetNs::new(format!("{id}c"))?;
        let server = NetNs::new(format!("{id}s"))?;
        let iface = format!("{id}c");
        let peer = format!("{id}s");
        let topo = Self {
            client,
            server,
            iface,
            peer,
        };
        topo.wire()?;
        Ok(topo)
    }

    /// Opens a TCP connection from the client namespace.
    /// The veth pair between the namespaces, addressed and up (again, after a test deleted it:
    /// whatever was attached to the old one is gone).
    pub fn wire(&self) -> anyhow::Result<()> {
        sh(&[
            "ip",
            "link",
            "add",
            &self.iface,
            "netns",
            &self.client.name,
            "type",
            "veth",
            "peer",
            "name",
            &self.peer,
            "netns",
            &self.server.name,
        ])?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V4}/24"),
            "dev",
            &self.iface,
        ])?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &self.iface,
            "nodad",
        ])?;
        for a in [ALLOWED_V4, DENIED_V4] {
            self.server
                .ip(&["addr", "add", &format!("{a}/24"), "dev", &self.peer])?;
        }
        for a in [ALLOWED_V6, DENIED_V6] {
            self.server.ip(&[
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                &self.peer,
                "nodad",
            ])?;
        }
        self.client.ip(&["link", "set", &self.iface, "up"])?;
        self.server.ip(&["link", "set", &self.peer, "up"])?;
        // Until linkwatch activates the device (up to a second after carrier-on), its qdisc is
        // `noop` and every packet sent is silently dropped: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        for (ns, dev) in [(&self.client, &self.iface), (&self.server, &self.peer)] {
            while !ns.ip(&["link", "show", "dev", dev])?.contains("state UP") {
                if Instant::now() > deadline {
                    bail!("{dev} in {} did not come up", ns.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    pub fn connect(&self, dst: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::new(ip(dst), port);
        self.client
            .run(move || TcpStream::connect_timeout(&addr, timeout))
    }

    /// Sends a UDP datagram from the client namespace and waits for the echo.
    pub fn udp_echo(&self, dst: &str, port: u16, timeout: Duration) -> bool {
        let addr = SocketAddr::new(ip(dst), port);
        self.client.run(move || {
            let bind: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }
            .parse()
            .unwrap();
            let s = UdpSocket::bind(bind).expect("udp bind");
            s.set_read_timeout(Some(timeout)).unwrap();
            let _ = s.send_to(b"ping", addr);
            let mut buf = [0u8; 64];
            matches!(s.recv_from(&mut buf), Ok((4, _)))
        })
    }
}
