//! Installs what the build and the tests need, idempotently: each step checks first and does
//! nothing when its tool is already there.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run::{on_path, output, status};

/// bpf-linker release built here; 0.13 supports LLVM 21 to 23.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// PyPI tools the tests run: (command, requirement). kubernetes-validate carries the
/// Kubernetes schemas, so the manifests are validated offline.
const PIP_TOOLS: &[(&str, &str)] = &[("kubernetes-validate", "kubernetes-validate==1.37.0")];

fn pip_tools() -> anyhow::Result<()> {
    for (tool, requirement) in PIP_TOOLS {
        if on_path(tool) {
            continue;
        }
        eprintln!("setup: installing {requirement} from PyPI");
        status(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            requirement,
        ]))
        .with_context(|| format!("cannot install {requirement} with pip"))?;
        if !on_path(tool) {
            bail!("{requirement} installed, but `{tool}` is not on PATH");
        }
    }
    Ok(())
}

/// Commands the tests and the demo run, and the Debian packages that provide them.
const APT_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("curl", "curl"),
    ("openssl", "openssl"),
    // The DNS tests' resolver and TLS server, started by the tests in their own namespaces.
    ("dnsmasq", "dnsmasq-base"),
    ("nginx", "nginx-light"),
    // `cargo xtask bench`: throughput runs, and the classic setup it compares with.
    ("iperf3", "iperf3"),
    // The TLS tests turn segmentation offloads off, so a ClientHello leaves in pieces.
    ("ethtool", "ethtool"),
    ("nft", "nftables"),
];

#[derive(clap::Args)]
pub(crate) struct SetupArgs {
    /// Skip installing apt packages (check only).
    #[arg(long)]
    pub(crate) no_apt: bool,
}

pub(crate) fn run(opts: &SetupArgs) -> anyhow::Result<()> {
    toolchains()?;
    bpf_linker()?;
    apt_tools(opts)?;
    pip_tools()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

/// Components of the nightly toolchain: `rust-src` for `-Z build-std=core`, `rustfmt` for the
/// nightly-only options of rustfmt.toml, `clippy` for the eBPF crate on its BPF target.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];
/// Components of the default (stable) toolchain that `cargo xtask lint` runs.
const STABLE_COMPONENTS: &[&str] = &["clippy"];

fn toolchains() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF program with the nightly toolchain")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("setup: installing the nightly toolchain");
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("cannot install the nightly toolchain (needed for -Z build-std=core)")?;
    }
    components(Some("nightly"), NIGHTLY_COMPONENTS)?;
    components(None, STABLE_COMPONENTS)
}

/// Adds the missing `wanted` components to `toolchain` (the default one if `None`).
fn components(toolchain: Option<&str>, wanted: &[&str]) -> anyhow::Result<()> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
    }
    let installed = output(&mut list)?;
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let which = toolchain.unwrap_or("the default toolchain");
    eprintln!("setup: adding {} to {which}", missing.join(" "));
    let mut add = Command::new("rustup");
    add.args(["component", "add"]).args(&missing);
    if let Some(t) = toolchain {
        add.args(["--toolchain", t]);
    }
    status(&mut add).with_context(|| format!("cannot add {} to {which}", missing.join(" ")))
}

fn bpf_linker() -> anyhow::Result<()> {
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    // No prebuilt bpf-linker can be downloaded here: build it against the nightly rustc's own
    // LLVM. bpf-linker's build wants an LLVM prefix (bin/llvm-config, lib/libLLVM.so); we make
    // one whose libraries are the nightly toolchain's.
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?
        .trim()
        .to_owned();
    let major = llvm.split('.').next().unwrap_or_default().to_owned();
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let libdir = sysroot.join("lib");
    let soname = std::fs::read_dir(&libdir)
        .with_context(|| format!("cannot list {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: the nightly toolchain ships no shared LLVM",
                libdir.display()
            )
        })?;
    let prefix = cache_dir().join(format!("llvm-prefix-{llvm}"));
    make_llvm_prefix(&prefix, &libdir.join(&soname), &soname)?;
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly LLVM {llvm} (about 80 s)"
    );
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix),
    )
    .with_context(|| {
        format!(
            "cannot build bpf-linker against LLVM {llvm} (prefix {})",
            prefix.display()
        )
    })?;
    if !Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn make_llvm_prefix(prefix: &Path, lib: &Path, soname: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let bin = prefix.join("bin");
    let libs = prefix.join("lib");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&libs)?;
    let config = bin.join("llvm-config");
    std::fs::write(&config, "#!/bin/sh\n")?;
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o755))?;
    for name in ["libLLVM.so", soname] {
        let link = libs.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), lib.display()))?;
    }
    Ok(())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("egress")
}

fn apt_tools(opts: &SetupArgs) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(tool, _)| {
            !on_path(tool)
                && !Path::new("/usr/sbin").join(tool).exists()
                && !Path::new("/sbin").join(tool).exists()
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if opts.no_apt {
        bail!(
            "missing packages: {} (install them, or drop --no-apt)",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    status(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update failed; are you root on a Debian-like system?")?;
    // Packages such as nginx start a system service on install; the tests start their own
    // servers in namespaces, so forbid that (policy-rc.d exit 101 = "action not allowed").
    let policy_rc = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy_rc.exists();
    if ours {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            policy_rc,
            "#!/bin/sh\n# written by cargo xtask setup for one apt-get run\nexit 101\n",
        )?;
        std::fs::set_permissions(policy_rc, std::fs::Permissions::from_mode(0o755))?;
    }
    let installed = status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("cannot install {}", missing.join(" ")));
    if ours {
        let _ = std::fs::remove_file(policy_rc);
    }
    installed
}
