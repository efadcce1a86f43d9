//! A small real Internet for DNS tests: dnsmasq (recursive resolver and authority for the test
//! zones) and nginx (TLS on 443) in the server namespace, the client namespace's resolv.conf
//! pointing at dnsmasq, and curl run as a process of the client namespace.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{NetNs, Topology, sh};

/// The resolver's addresses (dnsmasq listens there).
pub const RESOLVER_V4: &str = "198.18.0.53";
pub const RESOLVER_V6: &str = "2001:db8::53";

/// Web server addresses the zones point at; nothing allows them statically.
pub const WEB_CGR: &str = "198.18.0.10";
pub const WEB_CGR_V6: &str = "2001:db8::10";
pub const WEB_CDN: &str = "198.18.0.11";
pub const WEB_R2: &str = "198.18.0.12";
/// The apex `r2.cloudflarestorage.com` has an address of its own, so that reaching it proves
/// the `*.` rule and not an address shared with an allowed subdomain.
pub const WEB_R2_APEX: &str = "198.18.0.14";
pub const WEB_DENIED: &str = "198.18.0.13";
/// The race tests' addresses: dnsmasq synthesizes `n-198-19-X-Y.race.test` → 198.19.X.Y, and
/// the server namespace accepts connections to all of them (a local route), so every name of a
/// race has an address of its own and every connect is the first to its address.
pub const RACE_NET: &str = "198.19.0.0/16";
pub const RACE_FIRST: &str = "198.19.0.1";

/// The zones dnsmasq serves. `mirror.test` shares `cgr.dev`'s address (as names on one CDN
/// front-end do). `packages.wolfi.dev` is a CNAME chain across three zones;
/// `address=/r2.cloudflarestorage.com/` answers every name below the apex with one address;
/// the apex's `host-record` (which takes precedence) gives it another, so the policy's `*.`
/// rule is what excludes the apex.
fn dnsmasq_conf(ttl: u32) -> String {
    format!(
        "no-resolv\nno-hosts\nbind-interfaces\nlisten-address={RESOLVER_V4}\nlisten-address={RESOLVER_V6}\n\
         port=53\nuser=root\nlocal-ttl={ttl}\nauth-ttl={ttl}\nneg-ttl=1\ncache-size=0\n\
         host-record=cgr.dev,{WEB_CGR},{WEB_CGR_V6}\n\
         host-record=pop7.cdn2.test,{WEB_CDN}\n\
         cname=edge.cdn.test,pop7.cdn2.test\n\
         cname=packages.wolfi.dev,edge.cdn.test\n\
         address=/r2.cloudflarestorage.com/{WEB_R2}\n\
         host-record=r2.cloudflarestorage.com,{WEB_R2_APEX}\n\
         host-record=denied.test,{WEB_DENIED}\n\
         host-record=mirror.test,{WEB_CGR}\n\
         synth-domain=race.test,{RACE_NET},n-\n"
    )
}

pub(crate) fn nginx_conf(dir: &Path, cert: &Path, key: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           server {{\n    listen 443 ssl fastopen=64;\n    listen [::]:443 ssl fastopen=64;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
             location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        cert.display(),
        key.display()
    )
}

/// A self-signed certificate, made once per test process.
pub(crate) fn certificate() -> &'static (PathBuf, PathBuf) {
    static CERT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CERT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("egress-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        sh(&[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=egress-test",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ])
        .expect("openssl makes a test certificate");
        (cert, key)
    })
}

/// dnsmasq and nginx in the server namespace, and the client's resolv.conf.
pub struct World {
    pub topo: Topology,
    children: Vec<Child>,
    dir: tempfile::TempDir,
    netns_etc: PathBuf,
}

pub struct WorldOptions {
    /// TTL of every answer.
    pub ttl: u32,
    /// Nameservers in the client's resolv.conf.
    pub nameservers: Vec<&'static str>,
    /// Extra resolv.conf options (e.g. `use-vc` for DNS over TCP).
    pub options: &'static str,
}

impl Default for WorldOptions {
    fn default() -> Self {
        Self {
            ttl: 60,
            nameservers: vec![RESOLVER_V4],
            options: "",
        }
    }
}

impl World {
    pub fn new(opts: WorldOptions) -> anyhow::Result<Self> {
        let topo = Topology::new()?;
        let peer = topo.peer.clone();
        for a in [
            RESOLVER_V4,
            WEB_CGR,
            WEB_CDN,
            WEB_R2,
            WEB_R2_APEX,
            WEB_DENIED,
        ] {
            topo.server
                .ip(&["addr", "add", &format!("{a}/24"), "dev", &peer])?;
        }
        for a in [RESOLVER_V6, WEB_CGR_V6] {
            topo.server
                .ip(&["addr", "add", &format!("{a}/64"), "dev", &peer, "nodad"])?;
        }
        topo.server
            .ip(&["route", "add", "local", RACE_NET, "dev", "lo"])?;
        topo.client
            .ip(&["route", "add", RACE_NET, "via", crate::ALLOWED_V4])?;
        let dir = tempfile::tempdir()?;
        let netns_etc = PathBuf::from("/etc/netns").join(&topo.client.name);
        std::fs::create_dir_all(&netns_etc)?;
        let mut resolv = String::new();
        for ns in &opts.nameservers {
            resolv.push_str(&format!("nameserver {ns}\n"));
        }
        resolv.push_str(&format!("options timeout:2 attempts:2 {}\n", opts.options));
        std::fs::write(netns_etc.join("resolv.conf"), resolv)?;
        let mut world = Self {
            topo,
            children: Vec::new(),
            dir,
            netns_etc,
        };

        let conf = world.dir.path().join("dnsmasq.conf");
        std::fs::write(&conf, dnsmasq_conf(opts.ttl))?;
        let log = world.dir.path().join("dnsmasq.log");
        let args = [
            format!("--conf-file={}", conf.display()),
            format!(
                "--pid-file={}",
                world.dir.path().join("dnsmasq.pid").display()
            ),
            format!("--log-facility={}", log.display()),
        ];
        world.spawn_in_server(&[
            "dnsmasq",
            "--keep-in-foreground",
            &args[0],
            &args[1],
            &args[2],
        ])?;

        let (cert, key) = certificate();
        let nconf = world.dir.path().join("nginx.conf");
        std::fs::write(&nconf, nginx_conf(world.dir.path(), cert, key))?;
        world.spawn_in_server(&[
            "nginx",
            "-c",
            nconf.to_str().unwrap(),
            "-e",
            world.dir.path().join("nginx-error.log").to_str().unwrap(),
        ])?;
        world.wait_for_servers()?;
        Ok(world)
    }

    fn spawn_in_server(&mut self, cmd: &[&str]) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{}.stderr", cmd[0])))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.topo.server.name])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", cmd[0]))?;
        self.children.push(child);
        Ok(())
    }

    fn wait_for_servers(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let listening = sh(&["ip", "netns", "exec", &self.topo.server.name, "ss", "-lntu"])
                .unwrap_or_default();
            if listening.contains(&format!("{RESOLVER_V4}:53")) && listening.contains(":443") {
                return Ok(());
            }
            for c in &mut self.children {
                if let Some(status) = c.try_wait()? {
                    bail!("a test server exited with {status}: {}", self.logs());
                }
            }
            if Instant::now() > deadline {
                bail!("dnsmasq/nginx not listening after 10 s: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in [
            "dnsmasq.log",
            "nginx-error.log",
            "dnsmasq.stderr",
            "nginx.stderr",
        ] {
            out.push_str(&std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default());
        }
        out
    }

    pub fn client(&self) -> &NetNs {
        &self.topo.client
    }

    /// `curl https://URL` from the client namespace (its resolv.conf, the system resolver):
    /// the HTTP status, or `None` if it did not connect within `max`.
    pub fn curl(&self, url: &str, extra: &[&str], max: Duration) -> Option<u16> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.topo.client.name,
                "curl",
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--max-time")
            .arg(format!("{:.1}", max.as_secs_f64()))
            .args(extra)
            .arg(url)
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .ok()
            .filter(|&c| c != 0)
    }

    /// Runs a program in the client namespace, mount namespace included (so it sees the
    /// namespace's resolv.conf), and returns its stdout.
    pub fn run_in_client(&self, program: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.topo.client.name])
            .arg(program)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.netns_etc);
    }
}

/// Opens a connection from the client namespace to `addr:443` and sends a ClientHello naming
/// `name`; returns it once the server has answered (its first flight), so the connection is
/// admitted by that name. [`tls_exchange`] then proves bytes still cross both ways.
pub fn tls_open(topo: &Topology, addr: &str, name: &str) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Read, Write};
    let mut conn = topo.connect(addr, 443, Duration::from_secs(3))?;
    conn.write_all(&egress_common::testing::ClientHello::new(name).build())?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 4096];
    let n = conn.read(&mut buf)?;
    // A handshake record (its ServerHello), not an alert or a close.
    if n == 0 || buf[0] != 22 {
        return Err(std::io::Error::other(format!(
            "the server refused the ClientHello: {:02x?}",
            &buf[..n.min(8)]
        )));
    }
    // The rest of the first flight, so that a later read sees only new bytes.
    conn.set_read_timeout(Some(Duration::from_millis(300)))?;
    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
    Ok(conn)
}

/// One more exchange on a connection [`tls_open`] admitted: a record the server cannot take in
/// the middle of its handshake, which it answers (an alert, or closing). An error if nothing
/// comes back within 3 s: the bytes, or the answer, were dropped.
pub fn tls_exchange(conn: &mut std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut record = vec![23, 3, 3, 0, 32];
    record.resize(5 + 32, 0x5a);
    conn.write_all(&record)?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut buf = [0u8; 4096];
    conn.read(&mut buf).map(|_| ())
}

/// The policy the live tests run with.
pub fn policy(extra_dns: &str) -> String {
    format!(
        "mode: enforce\nports: [443]\nresolvers: [{RESOLVER_V4}, \"{RESOLVER_V6}\"]\n\
         allow:\n  names: [cgr.dev, packages.wolfi.dev, \"*.r2.cloudflarestorage.com\", \"*.race.test\"]\n\
         dns:\n{extra_dns}"
    )
}

/// Sends `payload` as a UDP datagram from `src:53` in `server` to the client of a
/// [`Topology`], with a raw socket, so the source can be any address (even the resolver's).
pub fn inject_from(server: &NetNs, src: &str, dst_port: u16, payload: Vec<u8>) {
    let src = src.to_owned();
    server.run(move || {
        let s = crate::raw::socket(&src, socket2::Protocol::UDP);
        let mut udp = Vec::new();
        udp.extend_from_slice(&53u16.to_be_bytes());
        udp.extend_from_slice(&dst_port.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]); // no checksum (allowed for IPv4)
        udp.extend_from_slice(&payload);
        crate::raw::send(&s, crate::CLIENT_V4, &udp);
    });
}

/// The test plays the resolver (no resolver process), so it controls the answers exactly: the
/// client's queries go to the resolver's address, and answers are injected from it.
pub struct PlayedResolver {
    pub topo: Topology,
    pub agent: crate::Agent,
    client: std::net::UdpSocket,
    pub port: u16,
    _servers: crate::Servers,
    _pins: crate::TestPins,
}

impl PlayedResolver {
    /// `names`: the YAML flow items of the policy's `allow.names`.
    pub fn new(names: &str) -> Self {
        Self::with_env(names, &[])
    }

    /// [`PlayedResolver::new`] with environment variables for the agent's process.
    pub fn with_env(names: &str, env: &[(&str, &str)]) -> Self {
        let topo = Topology::new().unwrap();
        for addr in [RESOLVER_V4, WEB_DENIED] {
            topo.server
                .ip(&["addr", "add", &format!("{addr}/24"), "dev", &topo.peer])
                .unwrap();
        }
        let servers = crate::Servers::start(&topo.server, &[443]);
        let pins = crate::TestPins::new();
        let policy = format!("resolvers: [{RESOLVER_V4}]\nallow:\n  names: [{names}]\n");
        let agent = crate::Agent::start_with_env(&topo, &pins, &policy, env).unwrap();
        let client = topo
            .client
            .run(|| std::net::UdpSocket::bind("0.0.0.0:0").unwrap());
        let port = client.local_addr().unwrap().port();
        Self {
            topo,
            agent,
            client,
            port,
            _servers: servers,
            _pins: pins,
        }
    }

    pub fn ask(&self, id: u16, name: &str) {
        let resolver: std::net::SocketAddr = format!("{RESOLVER_V4}:53").parse().unwrap();
        self.client
            .send_to(
                &crate::dnsmsg::query(id, name, hickory_proto::rr::RecordType::A),
                resolver,
            )
            .unwrap();
    }

    pub fn answer(&self, payload: Vec<u8>) {
        inject_from(&self.topo.server, RESOLVER_V4, self.port, payload);
    }

    /// Asks for `name`'s A record with `id` and plays the answer: `addr`, TTL 60.
    pub fn resolve(&self, id: u16, name: &str, addr: &str) {
        use crate::dnsmsg::{Rr, response};
        self.ask(id, name);
        self.answer(response(
            id,
            name,
            hickory_proto::rr::RecordType::A,
            &[Rr::Addr(name, addr, 60)],
        ));
    }

    /// CNAME targets the agent has allowed (entries of the exact-name map it adds).
    pub fn cname_targets(&self) -> usize {
        self.agent.datapath().name_counts().unwrap().1
    }

    /// Waits until the agent has allowed a CNAME target.
    pub fn wait_for_cname_target(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.cname_targets() == 0 {
            assert!(
                Instant::now() < deadline,
                "the agent did not allow the CNAME target: {}",
                self.agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
