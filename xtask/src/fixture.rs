//! `cargo xtask fixture`: the earlier egress builds the upgrade tests run against
//! (`tests/tests/migrate.rs`). Built from this repository's history, not committed: the old
//! *agent* is what makes the old state real (its policy apply, records, attachment, learning),
//! and the release binary (11 MB) is no fixture to commit. Cached under
//! `target/fixtures/<commit>/egress`; the tests find it through `EGRESS_OLD_BIN_0`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::run;

/// Layout 0: main before layout versions (27 maps pinned flat in the pin directory). Any later
/// commit of the same layout would do; `egress-user/layouts/v0.txt` is its definition, and the
/// migration refuses pins that differ from it, so a wrong commit fails the tests loudly.
pub(crate) const LAYOUT_0: &str = "7606f0e2e1cb33df59a50b67e3f955f99247feb8";

/// The environment variable naming the layout-0 agent for the tests.
pub(crate) const LAYOUT_0_ENV: &str = "EGRESS_OLD_BIN_0";

/// The layout-0 agent, built first if it is not cached.
pub(crate) fn layout_0() -> anyhow::Result<PathBuf> {
    build(LAYOUT_0)
}

fn build(commit: &str) -> anyhow::Result<PathBuf> {
    let fixtures = run::target_dir()?.join("fixtures");
    let bin = fixtures.join(commit).join("egress");
    if bin.exists() {
        return Ok(bin);
    }
    let root = run::workspace_root()?;
    if !has_commit(&root, commit) {
        // A shallow clone (CI) may lack it.
        eprintln!("fixture: fetching {commit}");
        let _ = run::status(
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(["fetch", "--quiet", "origin", commit]),
        );
        if !has_commit(&root, commit) {
            bail!(
                "commit {commit} (the layout-0 build the upgrade tests start from) is not in this clone and cannot be fetched: clone with history (`git fetch --unshallow`)"
            );
        }
    }
    let src = fixtures.join(format!("src-{}", &commit[..7]));
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src)?;
    eprintln!(
        "fixture: building egress at {commit} (once; cached in {})",
        bin.display()
    );
    let mut archive = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["archive", commit])
        .stdout(Stdio::piped())
        .spawn()
        .context("git archive")?;
    let tar = archive.stdout.take().context("git archive output")?;
    run::status(Command::new("tar").arg("-x").arg("-C").arg(&src).stdin(tar))?;
    if !archive.wait()?.success() {
        bail!("git archive {commit} failed");
    }
    run::status(
        Command::new("cargo")
            .args(["build", "--release", "--locked", "--package", "egress-user"])
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", fixtures.join("target")),
    )?;
    std::fs::create_dir_all(bin.parent().context("fixture dir")?)?;
    std::fs::copy(fixtures.join("target/release/egress"), &bin)
        .with_context(|| format!("cannot copy the fixture to {}", bin.display()))?;
    let _ = std::fs::remove_dir_all(&src);
    Ok(bin)
}

fn has_commit(root: &Path, commit: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn run() -> anyhow::Result<()> {
    let bin = layout_0()?;
    println!("{LAYOUT_0_ENV}={}", bin.display());
    Ok(())
}
