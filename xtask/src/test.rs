//! `cargo xtask test`: setup, lint, build, then every test of the workspace, on this kernel or
//! (`--vm`) inside Debian's kernels under qemu.

use std::process::Command;

use crate::{fixture, lint, run, setup, vm};

#[derive(clap::Args)]
pub(crate) struct Options {
    #[command(flatten)]
    setup: setup::SetupArgs,
    /// Run the test binaries inside Debian's kernels under qemu instead of on this kernel.
    #[arg(long)]
    vm: bool,
    /// With --vm: which kernel series to boot.
    #[arg(long, value_enum, default_value_t = vm::Kernels::All, requires = "vm")]
    kernel: vm::Kernels,
    /// Skip the lint step (rustfmt, clippy, repository hygiene).
    #[arg(long)]
    no_lint: bool,
    /// Extra arguments for the tests (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run(&opts.setup)?;
    run::require_root("test")?;
    if !opts.no_lint {
        lint::run()?;
    }
    // The earlier build the upgrade tests start from (built once, then cached).
    let old = fixture::layout_0()?;
    if opts.vm {
        return vm::run(opts.kernel, &opts.cargo_test_args, &old);
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
            .env("EGRESS_BIN", bin)
            .env(fixture::LAYOUT_0_ENV, old),
    )
}
