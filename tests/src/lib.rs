//! Test fixtures: network namespaces joined by a veth pair, servers and clients that run inside
//! them, and the real `egress` agent attached to the client side.
//!
//! Every fixture gets its own namespace, interface and pin-directory names, so tests run in
//! parallel, and removes what it made on drop. Addresses can repeat across fixtures because each
//! lives in its own namespaces.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod classic;
pub mod dnsmsg;
pub mod harness;
pub mod live;
use egress_user::{datapath::Datapath, pins::PinDir};

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

/// A name unique to this process and call, short enough for interface names (15 bytes).
pub fn unique(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n}", std::process::id() & 0xffff)
}

/// Runs a command and fails with its output if it fails.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted (with every process in it) on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(name: String) -> anyhow::Result<Self> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        // Without duplicate address detection the link-local addresses are usable at once;
        // otherwise IPv6 neighbour discovery stalls for the first second or two.
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv6.conf.all.accept_dad=0",
        ])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = File::open(self.path()).expect("namespace file");
        std::thread::spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("setns into the test namespace");
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(pids) = sh(&["ip", "netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = sh(&["kill", "-9", pid]);
            }
        }
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
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
        sh(&[
            "ip",
            "link",
            "add",
            &iface,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &server.name,
        ])?;
        client.ip(&["addr", "add", &format!("{CLIENT_V4}/24"), "dev", &iface])?;
        client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_V6}/64"),
            "dev",
            &iface,
            "nodad",
        ])?;
        for a in [ALLOWED_V4, DENIED_V4] {
            server.ip(&["addr", "add", &format!("{a}/24"), "dev", &peer])?;
        }
        for a in [ALLOWED_V6, DENIED_V6] {
            server.ip(&["addr", "add", &format!("{a}/64"), "dev", &peer, "nodad"])?;
        }
        client.ip(&["link", "set", &iface, "up"])?;
        server.ip(&["link", "set", &peer, "up"])?;
        // Until linkwatch activates the device (up to a second after carrier-on), its qdisc is
        // `noop` and every packet sent is silently dropped: wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        for (ns, dev) in [(&client, &iface), (&server, &peer)] {
            while !ns.ip(&["link", "show", "dev", dev])?.contains("state UP") {
                if Instant::now() > deadline {
                    bail!("{dev} in {} did not come up", ns.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(Self {
            client,
            server,
            iface,
            peer,
        })
    }

    /// Opens a TCP connection from the client namespace.
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

/// Whether this kernel has TCX links (Linux >= 6.6); older kernels get clsact filters, which
/// are not pinned, so tests skip what only links can show (link ids, interfaces from pins).
pub fn kernel_has_tcx() -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (6, 6)
}

/// Path of the `egress` binary: `EGRESS_BIN` (set by `cargo xtask test`), else the one built
/// beside this executable.
pub fn egress_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("EGRESS_BIN") {
        return p.into();
    }
    // Beside this executable (the tools in target/*/), or one level up (tests in target/*/deps/).
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("executable dir");
    let beside = here.join("egress");
    if beside.exists() {
        beside
    } else {
        here.parent().expect("target dir").join("egress")
    }
}

/// Runs the `egress` binary with `args`, inside `ns`'s network namespace if given (where its
/// interfaces live), and returns its output.
pub fn egress(ns: Option<&NetNs>, args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{}", ns.name))
                .arg(egress_bin());
            c
        }
        None => Command::new(egress_bin()),
    };
    cmd.args(args).output().expect("run egress")
}

/// A unique pin directory under `/sys/fs/bpf`, removed (with everything in it) on drop.
pub struct TestPins {
    pub pins: PinDir,
}

impl TestPins {
    pub fn new() -> Self {
        let pins = PinDir::new(format!("/sys/fs/bpf/egress-test-{}", unique("")));
        pins.ensure().expect("bpffs pin directory");
        Self { pins }
    }

    pub fn path(&self) -> &Path {
        self.pins.root()
    }
}

impl Default for TestPins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.pins.root());
    }
}

/// The real agent, running in the client namespace on the topology's interface.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
    pub policy: PathBuf,
    pub pins: PathBuf,
    ns: String,
    iface: String,
    /// Whether `run` gets `--iface` (without it, the agent picks the default-route interfaces).
    iface_flag: bool,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent and waits until `/readyz` answers 200.
    pub fn start(
        topo: &Topology,
        pins: &TestPins,
        policy: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(topo, pins, policy, extra, true)
    }

    /// Starts the agent without `--iface`: it must find the interface by the default route.
    pub fn start_on_default_route(
        topo: &Topology,
        pins: &TestPins,
        policy: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(topo, pins, policy, &[], false)
    }

    fn start_with(
        topo: &Topology,
        pins: &TestPins,
        policy: &str,
        extra: &[&str],
        iface_flag: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy)?;
        let mut agent = Self {
            child: None,
            log: dir.path().join("agent.log"),
            policy: policy_path,
            pins: pins.path().to_owned(),
            ns: topo.client.name.clone(),
            iface: topo.iface.clone(),
            iface_flag,
            _dir: dir,
        };
        agent.spawn(extra)?;
        agent.wait_ready(&topo.client)?;
        Ok(agent)
    }

    /// Starts (again) on the same pin directory, policy and interface.
    pub fn spawn(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let iface: &[&str] = if self.iface_flag {
            &["--iface", &self.iface]
        } else {
            &[]
        };
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(egress_bin())
            .arg("run")
            .args(iface)
            .args(["--metrics-addr", "127.0.0.1:9090"])
            .arg("--policy")
            .arg(&self.policy)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the egress agent")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn wait_ready(&mut self, ns: &NetNs) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("agent exited with {status}: {}", self.log_text());
            }
            if http_get(ns, "/readyz").is_some_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent not ready within 20 s: {}", self.log_text())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id (nsenter executes the agent in its own process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("agent not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(c.wait()?)
    }

    pub fn datapath(&self) -> Datapath {
        Datapath::open_pinned(&PinDir::new(&self.pins)).expect("pinned maps")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // In the namespace: a clsact filter is found by interface, which lives there.
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(egress_bin())
            .args(["detach", "--iface", &self.iface, "--pin-dir"])
            .arg(&self.pins)
            .output();
    }
}

/// A plain HTTP GET to the agent's metrics address inside `ns`: `(status, body)`.
pub fn http_get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(
            &"127.0.0.1:9090".parse().unwrap(),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let code = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((code, body))
    })
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

/// A policy allowing the topology's allowed addresses as static CIDRs.
pub fn static_policy(mode: &str) -> String {
    format!("mode: {mode}\nports: [443]\nallow:\n  cidrs: [{ALLOWED_V4}, \"{ALLOWED_V6}\"]\n")
}
