//! The real `egress` agent and what it needs: where its binary is and how to run it, a unique
//! bpffs pin directory (`TestPins`), `Agent` running `egress run` in a topology's client namespace,
//! `http_get` for its metrics address, `static_policy`, and `kernel_has_tcx` for which attachment
//! (and so which pins) the kernel gives it.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use egress_common::maps::Rule;
use egress_user::{datapath::Datapath, pins::PinDir};

use crate::{ALLOWED_V4, ALLOWED_V6, NetNs, Topology, unique};

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

/// Runs `egress ARGS --pin-dir PINS` outside any namespace, expects success, and returns its
/// standard output.
pub fn egress_ok_at(args: &[&str], pins: &TestPins) -> String {
    let mut full: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    full.push(std::ffi::OsStr::new("--pin-dir"));
    full.push(pins.path().as_os_str());
    let out = egress(None, &full);
    assert!(
        out.status.success(),
        "egress {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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

/// The agent binary of layout 0 (main at the commit named in `xtask/src/fixture.rs`),
/// built by `cargo xtask fixture` (which `cargo xtask test` runs) and found through
/// `EGRESS_OLD_BIN_0`.
pub fn old_bin() -> PathBuf {
    let p: PathBuf = std::env::var_os("EGRESS_OLD_BIN_0")
        .expect("EGRESS_OLD_BIN_0 is unset: run the tests with `cargo xtask test`, which builds the layout-0 agent (`cargo xtask fixture`) and sets it")
        .into();
    assert!(
        p.exists(),
        "EGRESS_OLD_BIN_0={} does not exist: run `cargo xtask fixture`",
        p.display()
    );
    p
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
    /// Environment variables for the agent's process (the debug build's test switches).
    env: Vec<(String, String)>,
    /// Another `egress` binary than the tree's (an earlier build, for upgrades).
    bin: Option<PathBuf>,
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
        Self::start_with(&topo.client, &topo.iface, pins, policy, extra, true)
    }

    /// [`Agent::start`] with environment variables for the agent's process, such as the debug
    /// build's `EGRESS_TEST_FAIL`.
    pub fn start_with_env(
        topo: &Topology,
        pins: &TestPins,
        policy: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut agent = Self::unstarted(&topo.client, &topo.iface, pins, policy, true)?;
        agent.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        agent.spawn(&[])?;
        agent.wait_ready(&topo.client)?;
        Ok(agent)
    }

    /// Starts the agent in namespace `ns`, enforcing on `iface` there.
    pub fn start_in(
        ns: &NetNs,
        iface: &str,
        pins: &TestPins,
        policy: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(ns, iface, pins, policy, extra, true)
    }

    /// Starts the agent without `--iface`: it must find the interface by the default route.
    pub fn start_on_default_route(
        topo: &Topology,
        pins: &TestPins,
        policy: &str,
    ) -> anyhow::Result<Self> {
        Self::start_with(&topo.client, &topo.iface, pins, policy, &[], false)
    }

    fn start_with(
        ns: &NetNs,
        iface: &str,
        pins: &TestPins,
        policy: &str,
        extra: &[&str],
        iface_flag: bool,
    ) -> anyhow::Result<Self> {
        let mut agent = Self::unstarted(ns, iface, pins, policy, iface_flag)?;
        agent.spawn(extra)?;
        agent.wait_ready(ns)?;
        Ok(agent)
    }

    fn unstarted(
        ns: &NetNs,
        iface: &str,
        pins: &TestPins,
        policy: &str,
        iface_flag: bool,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let policy_path = dir.path().join("policy.yaml");
        std::fs::write(&policy_path, policy)?;
        Ok(Self {
            child: None,
            log: dir.path().join("agent.log"),
            policy: policy_path,
            pins: pins.path().to_owned(),
            ns: ns.name.clone(),
            iface: iface.to_owned(),
            iface_flag,
            env: Vec::new(),
            bin: None,
            _dir: dir,
        })
    }

    /// An agent for `topo` with `policy`, not started yet ([`Agent::spawn`] starts it).
    pub fn unstarted_on(topo: &Topology, pins: &TestPins, policy: &str) -> anyhow::Result<Self> {
        Self::unstarted(&topo.client, &topo.iface, pins, policy, true)
    }

    /// Runs `bin` instead of the tree's agent from the next [`Agent::spawn`] on (`None`: the
    /// tree's again).
    pub fn set_bin(&mut self, bin: Option<PathBuf>) {
        self.bin = bin;
    }

    /// Replaces the environment variables of the next [`Agent::spawn`].
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Waits up to `max` for the agent to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, max: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            let status = self.child.as_mut()?.try_wait().ok()?;
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
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
            .arg(self.bin.clone().unwrap_or_else(egress_bin))
            .arg("run")
            .args(iface)
            .args(["--metrics-addr", "127.0.0.1:9090"])
            .arg("--policy")
            .arg(&self.policy)
            .arg("--pin-dir")
            .arg(&self.pins)
            .args(extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start the egress agent")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn wait_ready(&mut self, ns: &NetNs) -> anyhow::Result<()> {
        // Generous: under qemu without KVM, two agents verifying their programs at once take
        // more than 20 s (seen on 6.12).
        let deadline = Instant::now() + Duration::from_secs(60);
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
        bail!("agent not ready within 60 s: {}", self.log_text())
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

    /// Replaces the policy file (write then rename, as an editor or the kubelet does) and
    /// waits until the agent (its metrics in `ns`) has applied it (`egress_reloads_total`
    /// grew).
    pub fn set_policy(&self, ns: &NetNs, text: &str) {
        let before = metric(ns, "egress_reloads_total");
        let tmp = self.policy.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write the policy");
        std::fs::rename(&tmp, &self.policy).expect("rename the policy");
        wait_for("the reload", || metric(ns, "egress_reloads_total") > before);
    }

    /// Rewrites the policy file without waiting for an agent (one that is stopped, say).
    pub fn write_policy(&self, text: &str) {
        std::fs::write(&self.policy, text).expect("write the policy");
    }

    pub fn datapath(&self) -> Datapath {
        Datapath::open_pinned(&self.pin_dir()).expect("pinned maps")
    }

    /// The agent's pin directory.
    pub fn pin_dir(&self) -> PinDir {
        PinDir::new(&self.pins)
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

/// The value of one Prometheus sample of the agent in `ns`, e.g. `egress_reloads_total`.
pub fn metric(ns: &NetNs, sample: &str) -> f64 {
    let (_, body) = http_get(ns, "/metrics").expect("metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
}

/// Waits for a condition with a deadline generous enough for a kernel under emulation (the
/// verifier alone takes seconds there); the condition, not the time, is what is tested.
pub fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP GET to the agent's metrics address inside `ns`: `(status, body)`.
pub fn http_get(ns: &NetNs, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    ns.run(move || {
        // Generous: an agent under emulation, or walking a million entries for a scrape,
        // answers late; a refused connection (no agent) still fails at once.
        let mut s =
            TcpStream::connect_timeout(&"127.0.0.1:9090".parse().unwrap(), Duration::from_secs(5))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
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

/// A policy allowing the topology's allowed addresses as static CIDRs.
pub fn static_policy(mode: &str) -> String {
    format!(
        "mode: {mode}\nports: [443]\nresolvers: []\nallow:\n  cidrs: [{ALLOWED_V4}, \"{ALLOWED_V6}\"]\n  names: [{BY_HAND}]\n"
    )
}

/// A policy name under which tests allow addresses by hand ([`learn_by_hand`]): the agent's
/// reconciliation keeps only addresses some rule in force justifies.
pub const BY_HAND: &str = "learned-by-hand.test";

/// Allows `addr` until `until` (`CLOCK_BOOTTIME` ns) as if an answer for [`BY_HAND`] had
/// carried it: the policy in force must allow that name, or the next reconciliation revokes
/// the address.
pub fn learn_by_hand(dp: &mut Datapath, addr: IpAddr, until: u64) {
    learn_as(dp, BY_HAND, addr, until);
}

/// Allows `addr` until `until` as if an answer for the exact policy name `name` had carried it.
pub fn learn_as(dp: &mut Datapath, name: &str, addr: IpAddr, until: u64) {
    let cfg = dp.config().expect("config");
    let rule = Rule::exact(egress_common::hash::name_hashes(cfg.hash_k0, cfg.hash_k1, name).0);
    dp.learn(addr, rule, egress_user::clock::boot_ns(), until)
        .expect("learn");
}

/// Makes a learned address expired now, as the passing of its TTL would (the kernel compares
/// the expiry with its clock on every lookup), without a test waiting for the clock.
pub fn expire_by_hand(pins: &PinDir, addr: IpAddr) {
    expire_pinned(|name| pins.map(name), addr);
}

/// [`expire_by_hand`] in the learned map pinned at `pin(name)` (a layout-0 pin directory,
/// say).
pub fn expire_pinned(pin: impl Fn(&str) -> PathBuf, addr: IpAddr) {
    use aya::maps::{HashMap, Map, MapData};
    use egress_common::maps::{LearnedValue, names};
    fn expire<const N: usize>(path: PathBuf, key: [u8; N]) {
        let data = MapData::from_pin(path).expect("pinned learned map");
        let mut map: HashMap<MapData, [u8; N], LearnedValue> =
            HashMap::try_from(Map::HashMap(data)).expect("learned map");
        let mut v = map.get(&key, 0).expect("a learned entry to expire");
        v.expires_ns = egress_user::clock::boot_ns() - 1;
        map.insert(key, v, 0).expect("expire");
    }
    match addr {
        IpAddr::V4(a) => expire(pin(names::LEARNED_V4), a.octets()),
        IpAddr::V6(a) => expire(pin(names::LEARNED_V6), a.octets()),
    }
}

/// The kernel's id of the link pinned at `pin` (the handle is closed again at once: holding
/// it would keep the link alive).
pub fn link_id(pin: &Path) -> u32 {
    let link = aya::programs::links::FdLink::from(
        aya::programs::links::PinnedLink::from_pin(pin).unwrap(),
    );
    link.info().unwrap().id()
}
