//! Echo servers for the server namespace: `Servers` runs TCP and UDP echo threads on every
//! address and the given ports until dropped, and `echo_once` checks a client connection against
//! them.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{NetNs, ip};

/// Echo servers (TCP and UDP) on every server address and the given ports; stopped on drop.
pub struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Datagrams received by the UDP servers.
    pub udp_received: Arc<AtomicUsize>,
}

impl Servers {
    pub fn start(ns: &NetNs, ports: &[u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let udp_received = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for port in ports {
            for (tcp, any) in [
                (true, "0.0.0.0"),
                (true, "::"),
                (false, "0.0.0.0"),
                (false, "::"),
            ] {
                let addr = SocketAddr::new(ip(any), *port);
                let (stop, received) = (stop.clone(), udp_received.clone());
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                threads.push(ns.spawn(move || {
                    if tcp {
                        tcp_echo(addr, &stop, ready_tx)
                    } else {
                        udp_echo(addr, &stop, &received, ready_tx)
                    }
                }));
                ready_rx.recv().expect("server thread started");
            }
        }
        Self {
            stop,
            threads,
            udp_received,
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn v6_only(addr: SocketAddr) -> socket2::Socket {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s
}

fn tcp_echo(addr: SocketAddr, stop: &AtomicBool, ready: std::sync::mpsc::Sender<()>) {
    let s = v6_only(addr);
    s.set_reuse_address(true).unwrap();
    s.bind(&addr.into()).expect("tcp bind");
    s.listen(128).unwrap();
    let listener: TcpListener = s.into();
    listener.set_nonblocking(true).unwrap();
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                std::thread::spawn(move || {
                    conn.set_nonblocking(false).ok();
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn udp_echo(
    addr: SocketAddr,
    stop: &AtomicBool,
    received: &AtomicUsize,
    ready: std::sync::mpsc::Sender<()>,
) {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, None).unwrap();
    if addr.is_ipv6() {
        s.set_only_v6(true).unwrap();
    }
    s.bind(&addr.into()).expect("udp bind");
    let sock: UdpSocket = s.into();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let _ = ready.send(());
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            received.fetch_add(1, Ordering::Relaxed);
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// Writes `msg` and expects it echoed back.
pub fn echo_once(conn: &mut TcpStream, msg: &[u8]) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.write_all(msg)?;
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf)?;
    if buf != msg {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}
