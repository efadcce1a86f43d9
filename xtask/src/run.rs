//! Running commands with errors that say what failed.

use std::process::Command;

use anyhow::{Context as _, bail};

/// Runs `cmd` with inherited output; fails naming the command if it fails.
pub(crate) fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails naming the command and its stderr if it fails.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The workspace's target directory.
pub(crate) fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(metadata()?.target_directory.into_std_path_buf())
}

/// The workspace's root directory.
pub(crate) fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    Ok(metadata()?.workspace_root.into_std_path_buf())
}

fn metadata() -> anyhow::Result<cargo_metadata::Metadata> {
    cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")
}

/// Root is needed to load eBPF programs and to create network namespaces.
pub(crate) fn require_root(task: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask {task}` loads eBPF programs and creates network namespaces, which needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it as root, e.g. `sudo -E cargo xtask {task}`"
        );
    }
    Ok(())
}
