//! `cargo xtask test`: setup, build, then every test of the workspace.

use std::process::Command;

use crate::{run, setup};

#[derive(clap::Args)]
pub(crate) struct Options {
    #[command(flatten)]
    setup: setup::SetupArgs,
    /// Run the tests inside Debian's Linux 6.1 under qemu instead of on this kernel.
    #[arg(long)]
    vm: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run(&opts.setup)?;
    run::require_root("test")?;
    if opts.vm {
        return crate::vm::run(&opts.cargo_test_args);
    }
    // Builds the eBPF object too (egress-user/build.rs).
    run::status(Command::new("cargo").args(["build", "--package", "egress-user", "--bins"]))?;
    let bin = run::target_dir()?.join("debug").join("egress");
    // The default members (everything but the BPF-only crate); --no-fail-fast reports every
    // failing test binary at the end instead of stopping at the first.
    run::status(
        Command::new("cargo")
            .args(["test", "--no-fail-fast"])
            .args(&opts.cargo_test_args)
            .env("EGRESS_BIN", bin),
    )
}
