//! `cargo xtask test --vm`: the test binaries inside Debian's Linux 6.1 (the oldest kernel we
//! support) under qemu, with virtme-ng sharing this machine's root filesystem, so every program
//! is proven to load and behave there.
//!
//! Everything it needs comes from the registries and is cached under ~/.cache/egress/vm:
//! qemu-system-x86 and kmod (apt), virtme-ng (PyPI), the kernel package (apt, unpacked, never
//! installed). qemu runs without KVM: nested KVM on the machines we run on fails on an MSR.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run::{self, on_path, output, status};

/// The kernel package: Debian 12's Linux 6.1.
const KERNEL_PACKAGE_PREFIX: &str = "linux-image-6.1.0-";
const KERNEL_PACKAGE_SUFFIX: &str = "-amd64-unsigned";

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
        .join(".cache/egress/vm")
}

/// Installs qemu, depmod and virtme-ng, and unpacks the 6.1 kernel; returns (vmlinuz, release).
fn prepare() -> anyhow::Result<(PathBuf, String)> {
    let mut missing = Vec::new();
    if !on_path("qemu-system-x86_64") {
        missing.push("qemu-system-x86");
    }
    if !on_path("depmod") && !Path::new("/usr/sbin/depmod").exists() {
        missing.push("kmod");
    }
    if !missing.is_empty() {
        status(Command::new("apt-get").args(["update", "-q"]))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .with_context(|| format!("cannot install {}", missing.join(" ")))?;
    }
    if !on_path("vng") {
        status(Command::new("python3").args(["-m", "pip", "install", "-q", "virtme-ng"]))
            .context("cannot install virtme-ng from PyPI")?;
    }
    let dir = cache();
    std::fs::create_dir_all(&dir)?;
    let unpacked = dir.join("kernel");
    let find = |root: &Path| -> Option<(PathBuf, String)> {
        let boot = std::fs::read_dir(root.join("boot")).ok()?;
        boot.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
            .map(|rel| (root.join("boot").join(format!("vmlinuz-{rel}")), rel))
    };
    if find(&unpacked).is_none() {
        // The newest 6.1 image the archive has.
        let names = output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!("^{KERNEL_PACKAGE_PREFIX}[0-9]+{KERNEL_PACKAGE_SUFFIX}$"),
        ]))?;
        // The newest ABI by number (a string maximum would put -9 above -56).
        let abi = |name: &str| {
            name.strip_prefix(KERNEL_PACKAGE_PREFIX)
                .and_then(|r| r.strip_suffix(KERNEL_PACKAGE_SUFFIX))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let package = names
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|n| abi(n).map(|a| (a, n)))
            .max()
            .map(|(_, n)| n.to_owned())
            .context("no Linux 6.1 image in the apt archive (run apt-get update?)")?;
        eprintln!("vm: downloading {package}");
        status(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&dir),
        )?;
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("downloaded kernel package not found")?;
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    }
    let (vmlinuz, release) = find(&unpacked).context("no vmlinuz in the unpacked kernel")?;
    // virtme-ng loads the guest's modules (virtio, 9p, overlay) from /lib/modules/<release>.
    let modules = unpacked.join("lib/modules").join(&release);
    if !modules.join("modules.dep").exists() {
        status(
            Command::new("depmod")
                .arg("-b")
                .arg(&unpacked)
                .arg(&release),
        )?;
    }
    let link = Path::new("/lib/modules").join(&release);
    if !link.exists() {
        std::fs::create_dir_all("/lib/modules")?;
        std::os::unix::fs::symlink(&modules, &link)
            .with_context(|| format!("cannot link {}", link.display()))?;
    }
    Ok((vmlinuz, release))
}

/// Test executables of the workspace's default members (built, not run).
fn test_binaries() -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = output(Command::new("cargo").args([
        "test",
        "--no-run",
        "--message-format=json",
        "--package",
        "egress-tests",
    ]))?;
    let mut bins = Vec::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["kind"][0] == "test"
            && let Some(exe) = msg["executable"].as_str()
        {
            bins.push((
                msg["target"]["name"].as_str().unwrap_or("?").to_owned(),
                PathBuf::from(exe),
            ));
        }
    }
    bins.sort();
    Ok(bins)
}

pub(crate) fn run(filter: &[String]) -> anyhow::Result<()> {
    let (vmlinuz, release) = prepare()?;
    status(Command::new("cargo").args(["build", "--package", "egress-user", "--bins"]))?;
    let target = run::target_dir()?.join("debug");
    let bins = test_binaries()?;
    let root = target
        .parent()
        .and_then(Path::parent)
        .context("workspace root")?
        .to_owned();
    let mut script = format!(
        "cd {}/tests && export EGRESS_BIN={} RUST_BACKTRACE=0; uname -r; fails=0; ",
        root.display(),
        target.join("egress").display()
    );
    for (name, exe) in &bins {
        script.push_str(&format!(
            "echo '== {name}'; {} {} 2>&1 || fails=$((fails+1)); ",
            exe.display(),
            filter.join(" ")
        ));
    }
    script.push_str("echo EGRESS_VM_FAILED=$fails");
    eprintln!(
        "vm: booting Linux {release} under qemu (no KVM); about 5 s to boot, tests run slower than on the host"
    );
    let started = std::time::Instant::now();
    let out = Command::new("vng")
        .args(["-v", "-r"])
        .arg(&vmlinuz)
        .args([
            "--user",
            "root",
            "--disable-kvm",
            "--memory",
            "2G",
            "--cpus",
            "2",
            "--exec",
            &script,
        ])
        .output()
        .context("cannot start virtme-ng (vng)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    // The guest's console carries kernel messages too; print what the tests printed.
    let mut failed = None;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(n) = line.strip_prefix("EGRESS_VM_FAILED=") {
            failed = n.trim().parse::<u32>().ok();
        } else if !line.starts_with('[') && !line.contains("is global and valid") {
            println!("{line}");
        }
    }
    eprintln!("vm: done in {:.0} s", started.elapsed().as_secs_f64());
    match failed {
        Some(0) => Ok(()),
        Some(n) => bail!("{n} test binaries failed in the Linux {release} VM"),
        None => bail!("the VM did not finish the tests (see the console output above)"),
    }
}
