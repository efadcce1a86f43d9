//! `cargo xtask image`: a minimal container image (Containerfile: the static `egress` binary in
//! an empty image). Builds the binary statically linked against glibc (`+crt-static`, set for
//! the host target only so the eBPF build is untouched), then the image with buildah, installed
//! from apt if missing. buildah runs daemonless here: the vfs storage driver and chroot
//! isolation need no Docker engine, no overlay mounts and no user namespaces. The image is
//! checked by running `/egress --version` in it and saved as an OCI archive.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run;

const TARGET: &str = "x86_64-unknown-linux-gnu";
const TAG: &str = "localhost/egress:dev";

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Only build the static binary.
    #[arg(long)]
    binary_only: bool,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    run::status(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "--target",
                TARGET,
                "-p",
                "egress-user",
                "--bin",
                "egress",
            ])
            .env(
                "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                "-C target-feature=+crt-static",
            ),
    )?;
    let target = run::target_dir()?;
    let bin = target.join(TARGET).join("release").join("egress");
    let ldd = Command::new("ldd").arg(&bin).output()?;
    let ldd =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    if !(ldd.contains("statically linked") || ldd.contains("not a dynamic executable")) {
        bail!("{} is not statically linked: {ldd}", bin.display());
    }
    eprintln!("image: static binary {}", bin.display());
    if opts.binary_only {
        return Ok(());
    }
    if !run::on_path("buildah") {
        eprintln!("image: installing buildah from apt");
        run::status(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "buildah"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("cannot install buildah")?;
    }
    let root = run::workspace_root()?;
    let buildah = || {
        let mut c = Command::new("buildah");
        c.args(["--storage-driver", "vfs"]).current_dir(&root);
        c
    };
    run::status(buildah().args([
        "bud",
        "--isolation",
        "chroot",
        "-f",
        "Containerfile",
        "-t",
        TAG,
        ".",
    ]))?;
    let ctr = run::output(buildah().args(["from", TAG]))?
        .trim()
        .to_owned();
    let version =
        run::output(buildah().args(["run", "--isolation", "chroot", &ctr, "/egress", "--version"]));
    let _ = run::output(buildah().args(["rm", &ctr]));
    let version = version.context("the image does not run /egress")?;
    let archive = target.join("egress-image.tar");
    let _ = std::fs::remove_file(&archive);
    run::status(buildah().args(["push", TAG, &format!("oci-archive:{}", archive.display())]))?;
    eprintln!(
        "image: {TAG} runs `{}`; saved as {} (load it with `podman load -i` or push it with `buildah push`)",
        version.trim(),
        archive.display()
    );
    Ok(())
}
