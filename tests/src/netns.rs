//! Network namespaces and the shell helpers that build them: `NetNs` (created with loopback up and
//! duplicate address detection off, deleted with every process in it on drop), `sh` to run a
//! command and fail with its output, and `unique` for per-fixture names.

use std::{
    fs::File,
    os::fd::AsFd,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU64, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};

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

    /// A `TcpExt` counter of this namespace's stack (/proc/net/netstat), e.g. `TCPSynRetrans`:
    /// the first SYNs that had to be sent again.
    pub fn tcp_ext(&self, name: &str) -> u64 {
        let text = sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "cat",
            "/proc/net/netstat",
        ])
        .unwrap_or_default();
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return 0;
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
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
