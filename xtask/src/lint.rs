//! `cargo xtask lint` (also the first step of `cargo xtask test`): repository hygiene, rustfmt
//! and clippy with `-D warnings`, for the host crates and for the eBPF crate on its BPF target.
//! Each check runs even when an earlier one failed, and all failures are reported together.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run::{output, status};

/// Tracked files above this size are refused: build outputs and data sets do not belong in git.
const MAX_TRACKED_BYTES: u64 = 5 * 1024 * 1024;

/// The BPF target the eBPF crate builds for (as aya-build picks it on a little-endian host).
const BPF_TARGET: &str = "bpfel-unknown-none";

type Check = fn() -> anyhow::Result<()>;

pub(crate) fn run() -> anyhow::Result<()> {
    let checks: [(&str, Check); 5] = [
        ("repository hygiene", hygiene),
        ("rustfmt", fmt),
        ("rustfmt (fuzz)", fmt_fuzz),
        ("clippy (host crates)", clippy_host),
        ("clippy (eBPF crate, BPF target)", clippy_bpf),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        eprintln!("lint: {name}");
        if let Err(e) = check() {
            eprintln!("lint: {name} FAILED: {e:#}");
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join(", "));
    }
    Ok(())
}

/// No tracked file may match `.gitignore` (generated output committed before it was ignored)
/// or be larger than [`MAX_TRACKED_BYTES`].
fn hygiene() -> anyhow::Result<()> {
    if !Path::new(".git").exists() {
        eprintln!("lint: not a git checkout; hygiene skipped");
        return Ok(());
    }
    let ignored = output(Command::new("git").args(["ls-files", "-ci", "--exclude-standard"]))?;
    let ignored: Vec<&str> = ignored.lines().collect();
    let tracked = output(Command::new("git").args(["ls-files", "-z"]))?;
    let mut large = Vec::new();
    for path in tracked.split('\0').filter(|p| !p.is_empty()) {
        // A tracked file deleted in the work tree has no size to check.
        if let Ok(meta) = std::fs::symlink_metadata(path)
            && meta.len() > MAX_TRACKED_BYTES
        {
            large.push(format!("{path} ({} bytes)", meta.len()));
        }
    }
    let mut problems = Vec::new();
    if !ignored.is_empty() {
        problems.push(format!(
            "{} tracked files match .gitignore (untrack them with `git rm -r --cached`): {}",
            ignored.len(),
            ignored
                .iter()
                .take(10)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !large.is_empty() {
        problems.push(format!(
            "tracked files over {MAX_TRACKED_BYTES} bytes: {}",
            large.join(", ")
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

/// rustfmt.toml uses nightly-only options (import grouping), so the check runs on nightly.
fn fmt() -> anyhow::Result<()> {
    status(Command::new("cargo").args(["+nightly", "fmt", "--all", "--", "--check"]))
        .context("code is not formatted: run `cargo +nightly fmt --all`")
}

/// The fuzz targets are a workspace of their own.
fn fmt_fuzz() -> anyhow::Result<()> {
    status(
        Command::new("cargo")
            .args(["+nightly", "fmt", "--all", "--", "--check"])
            .current_dir("fuzz"),
    )
    .context("fuzz code is not formatted: run `cargo +nightly fmt --all` in fuzz/")
}

/// The default members (every crate but the BPF-only one), all targets.
fn clippy_host() -> anyhow::Result<()> {
    status(Command::new("cargo").args([
        "clippy",
        "--quiet",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

/// The eBPF crate as aya-build compiles it (nightly, `-Z build-std=core`, the BPF target and
/// its `bpf_target_arch` cfg), in a target directory of its own so that the host build's
/// artifacts are not invalidated.
fn clippy_bpf() -> anyhow::Result<()> {
    let arch = std::env::consts::ARCH;
    status(
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--quiet",
                "--package",
                "egress-ebpf",
                "--bins",
                "--release",
                "--target",
                BPF_TARGET,
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/bpf-clippy",
                "--",
                "-D",
                "warnings",
            ])
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                format!("--cfg=bpf_target_arch=\"{arch}\""),
            ),
    )
}
