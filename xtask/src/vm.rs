//! `cargo xtask test --vm [--kernel 6.1|6.12|all]`: the test binaries (and `verifier-stats`)
//! inside Debian's Linux 6.1 and 6.12 under qemu, with virtme-ng sharing this machine's root
//! filesystem, so every program is proven to load and behave on each kernel series.
//!
//! Everything it needs comes from the registries: qemu-system-x86, busybox-static (virtme-ng
//! builds its initramfs with it) and kmod from apt, virtme-ng from PyPI, the kernel packages from apt
//! (downloaded and unpacked under ~/.cache/egress/vm, never installed). Nothing installed before
//! is removed: the apt install is simulated first, and a plan that removes a package is refused
//! (see [`apt_install_without_removals`]). qemu runs without KVM: nested KVM on the machines we
//! run on fails on an MSR.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::run::{self, on_path, output, status};

/// virtme-ng release the VM runs are made with.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// The kernel series of Debian's archive that the VM run boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Kernels {
    /// Debian 12's Linux 6.1: the oldest kernel egress supports (clsact attachment, no TCX).
    #[value(name = "6.1")]
    V6_1,
    /// Debian 12's security-archive Linux 6.12 (TCX).
    #[value(name = "6.12")]
    V6_12,
    /// Both, one after the other.
    All,
}

/// One kernel series: how its unsigned image package is named (`prefix<version>suffix`).
struct Series {
    name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
}

const SERIES: [Series; 2] = [
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
    },
];

impl Kernels {
    fn series(self) -> Vec<&'static Series> {
        match self {
            Self::V6_1 => vec![&SERIES[0]],
            Self::V6_12 => vec![&SERIES[1]],
            Self::All => SERIES.iter().collect(),
        }
    }
}

fn cache() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
        .join(".cache/egress/vm")
}

/// Installs qemu, busybox, depmod and virtme-ng where missing.
fn prepare_tools() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !on_path("qemu-system-x86_64") {
        missing.push("qemu-system-x86");
    }
    // virtme-ng builds the guest's initramfs from a statically linked busybox.
    if !package_installed("busybox-static") {
        missing.push("busybox-static");
    }
    if !on_path("depmod") && !Path::new("/usr/sbin/depmod").exists() {
        missing.push("kmod");
    }
    if !missing.is_empty() {
        apt_install_without_removals(&missing)?;
    }
    if !on_path("vng") {
        eprintln!("vm: installing {VIRTME_NG} from PyPI");
        status(Command::new("python3").args(["-m", "pip", "install", "-q", VIRTME_NG]))
            .context("cannot install virtme-ng from PyPI")?;
    }
    Ok(())
}

fn package_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

/// The packages an `apt-get install` plan would remove (its `Remv` lines).
fn removals(packages: &[&str], release: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new("apt-get");
    cmd.args(["-s", "install", "--no-install-recommends"]);
    if let Some(r) = release {
        cmd.args(["-t", r]);
    }
    let plan = output(cmd.args(packages))?;
    Ok(plan
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_owned())
        .collect())
}

/// Installs `packages` with apt, never removing an installed package. Machines of this kind
/// ship a backported `qemu-utils` (10.x) that the distribution's own `qemu-system-x86` (7.2)
/// conflicts with; when the plain plan would remove something, the same install is planned
/// from the release's backports suite (whose qemu matches), adding that suite to apt's sources
/// if needed. If that plan removes something too, nothing is installed and the error names
/// the packages.
fn apt_install_without_removals(packages: &[&str]) -> anyhow::Result<()> {
    status(Command::new("apt-get").args(["update", "-q"]))?;
    let mut release = None;
    let plain = removals(packages, None)?;
    if !plain.is_empty() {
        let codename = os_codename()?;
        let backports = format!("{codename}-backports");
        eprintln!(
            "vm: installing {} from {codename} would remove {}; trying {backports}",
            packages.join(" "),
            plain.join(" ")
        );
        add_backports(&codename)?;
        let via_backports = removals(packages, Some(&backports))?;
        if !via_backports.is_empty() {
            bail!(
                "installing {} would remove installed packages ({} from {codename}, {} from {backports}); nothing was installed. Install qemu-system-x86 and busybox by hand in versions that fit, then run again",
                packages.join(" "),
                plain.join(" "),
                via_backports.join(" ")
            );
        }
        release = Some(backports);
    }
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "--no-install-recommends"]);
    if let Some(r) = &release {
        cmd.args(["-t", r]);
    }
    status(cmd.args(packages).env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("cannot install {}", packages.join(" ")))
}

fn os_codename() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")
}

/// Adds `<codename>-backports` to apt's sources (a file of its own, saying who wrote it) unless
/// a source already lists it. Backports have a low priority: nothing else is upgraded from it.
fn add_backports(codename: &str) -> anyhow::Result<()> {
    let suite = format!("{codename}-backports");
    let policy = output(Command::new("apt-cache").arg("policy"))?;
    if policy.contains(&format!("a={suite}")) || policy.contains(&format!("n={suite}")) {
        return Ok(());
    }
    let file = Path::new("/etc/apt/sources.list.d/egress-vm-backports.sources");
    eprintln!("vm: adding {suite} to apt's sources ({})", file.display());
    std::fs::write(
        file,
        format!(
            "# Written by `cargo xtask test --vm`: qemu-system-x86 in the version of the backported\n\
             # qemu-utils this machine ships (the {codename} one conflicts with it).\n\
             Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {suite}\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("cannot write {}", file.display()))?;
    status(Command::new("apt-get").args(["update", "-q"]))
}

/// Downloads and unpacks the newest image of `series`; returns (vmlinuz, release).
fn prepare_kernel(series: &Series) -> anyhow::Result<(PathBuf, String)> {
    let dir = cache().join(series.name);
    std::fs::create_dir_all(&dir)?;
    let unpacked = dir.join("kernel");
    let find = |root: &Path| -> Option<(PathBuf, String)> {
        let boot = std::fs::read_dir(root.join("boot")).ok()?;
        boot.filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
            .map(|rel| (root.join("boot").join(format!("vmlinuz-{rel}")), rel))
    };
    if find(&unpacked).is_none() {
        let names = output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!(
                "^{}[0-9]+{}$",
                series.prefix.replace('.', "\\."),
                series.suffix.replace('+', "\\+")
            ),
        ]))?;
        // The newest by number (a string maximum would put -9 above -56).
        let number = |name: &str| {
            name.strip_prefix(series.prefix)
                .and_then(|r| r.strip_suffix(series.suffix))
                .and_then(|n| n.parse::<u32>().ok())
        };
        let package = names
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|n| number(n).map(|v| (v, n)))
            .max()
            .map(|(_, n)| n.to_owned())
            .with_context(|| {
                format!(
                    "no Linux {} image in the apt archive (run apt-get update?)",
                    series.name
                )
            })?;
        eprintln!("vm: downloading {package}");
        status(
            Command::new("apt-get")
                // The cache is root's: download as root, not as apt's sandbox user.
                .args(["-o", "APT::Sandbox::User=root", "download", &package])
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

/// Test executables of the tests crate (built, not run).
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

/// What one kernel's run found.
struct Outcome {
    series: &'static str,
    release: String,
    seconds: f64,
    /// Failed test binaries; `None` if the VM did not finish.
    failed: Option<u32>,
    verifier: Vec<String>,
}

pub(crate) fn run(kernels: Kernels, filter: &[String], old: &Path) -> anyhow::Result<()> {
    prepare_tools()?;
    status(Command::new("cargo").args(["build", "--package", "egress-user", "--bins"]))?;
    status(Command::new("cargo").args([
        "build",
        "--package",
        "egress-tests",
        "--bin",
        "verifier-stats",
    ]))?;
    let target = run::target_dir()?.join("debug");
    let bins = test_binaries()?;
    let root = run::workspace_root()?;
    let script = cache().join("guest.sh");
    std::fs::create_dir_all(cache())?;
    std::fs::write(&script, guest_script(&root, &target, &bins, filter, old))
        .with_context(|| format!("cannot write {}", script.display()))?;
    let mut outcomes = Vec::new();
    for series in kernels.series() {
        let (vmlinuz, release) = prepare_kernel(series)?;
        outcomes.push(boot(series.name, &vmlinuz, release, &script)?);
    }
    eprintln!("\nvm: summary");
    for o in &outcomes {
        let result = match o.failed {
            Some(0) => "all test binaries passed".to_owned(),
            Some(n) => format!("{n} test binaries FAILED"),
            None => "did not finish".to_owned(),
        };
        eprintln!(
            "vm: Linux {} ({}): {result} in {:.0} s; verifier: {}",
            o.series,
            o.release,
            o.seconds,
            o.verifier.join("; ")
        );
    }
    let bad: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failed != Some(0))
        .map(|o| o.series)
        .collect();
    if !bad.is_empty() {
        bail!("the VM run failed on Linux {}", bad.join(", "));
    }
    Ok(())
}

/// The shell script the guest runs: verifier figures, then every test binary; the last line
/// carries the number of failed binaries.
fn guest_script(
    root: &Path,
    target: &Path,
    bins: &[(String, PathBuf)],
    filter: &[String],
    old: &Path,
) -> String {
    // The guest shares this root filesystem but not this environment: tools installed per user
    // (pyenv shims such as kubernetes-validate, cargo's bin) need the same PATH.
    let path = std::env::var("PATH").unwrap_or_default();
    let pyenv = std::env::var("PYENV_ROOT").unwrap_or_default();
    let mut script = format!(
        "cd {}/tests && export EGRESS_BIN={} {}={} RUST_BACKTRACE=0 PATH='{path}' PYENV_ROOT='{pyenv}'; uname -r; fails=0; \
         {} | sed 's/^/EGRESS_VM_VERIFIER: /'; ",
        root.display(),
        target.join("egress").display(),
        crate::fixture::LAYOUT_0_ENV,
        old.display(),
        target.join("verifier-stats").display(),
    );
    for (name, exe) in bins {
        script.push_str(&format!(
            "echo '== {name}'; {} {} 2>&1 || fails=$((fails+1)); ",
            exe.display(),
            filter.join(" ")
        ));
    }
    script.push_str("echo EGRESS_VM_FAILED=$fails");
    script
}

/// The longest a kernel's run may stay silent before it is taken for hung and stopped.
const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

fn boot(
    series: &'static str,
    vmlinuz: &Path,
    release: String,
    script: &Path,
) -> anyhow::Result<Outcome> {
    use std::io::BufRead as _;
    eprintln!(
        "vm: booting Linux {release} under qemu (no KVM); about 15 s to boot, tests run slower than on the host"
    );
    let started = Instant::now();
    let mut child = Command::new("vng")
        .args(["-v", "-r"])
        .arg(vmlinuz)
        .args([
            "--user",
            "root",
            "--disable-kvm",
            "--memory",
            "2G",
            "--cpus",
            "2",
            // virtme-ng passes the command on the kernel command line (base64): a long one
            // overruns it and the guest dies at once ("PANIC: early exception 0x06"), so the
            // guest runs the script from a file on the shared root filesystem.
            "--exec",
            &format!("sh {}", script.display()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start virtme-ng (vng)")?;
    // The guest's console (stdout and stderr) is printed as it comes, so a slow run shows its
    // progress and a hung one where it stopped.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().context("vng stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("vng stderr")?),
    ]
    .into_iter()
    .map(|pipe| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut failed = None;
    let mut verifier = Vec::new();
    loop {
        match rx.recv_timeout(SILENCE_LIMIT) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                if let Some(n) = line.strip_prefix("EGRESS_VM_FAILED=") {
                    failed = n.trim().parse::<u32>().ok();
                } else if let Some(v) = line.strip_prefix("EGRESS_VM_VERIFIER: ") {
                    println!("{v}");
                    verifier.push(v.to_owned());
                } else if !line.starts_with('[') && !line.contains("is global and valid") {
                    // Kernel messages ("[  1.23] ...") and the verifier's log lines are noise.
                    println!("{line}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "vm: Linux {release}: no output for {} s, stopping it",
                    SILENCE_LIMIT.as_secs()
                );
                let _ = child.kill();
                break;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.wait();
    for r in readers {
        let _ = r.join();
    }
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("vm: Linux {release} done in {seconds:.0} s");
    Ok(Outcome {
        series,
        release,
        seconds,
        failed,
        verifier,
    })
}
