//! `cargo xtask demo`: builds and runs the demo (tests/src/bin/demo.rs) in a throwaway sandbox.

use std::{
    process::Command,
    sync::{Arc, atomic::AtomicBool},
};

use anyhow::Context as _;

use crate::{run, setup};

pub(crate) fn run(opts: &setup::SetupArgs) -> anyhow::Result<()> {
    setup::run(opts)?;
    run::require_root("demo")?;
    run::status(Command::new("cargo").args([
        "build",
        "--quiet",
        "--package",
        "egress-user",
        "--bins",
    ]))?;
    run::status(Command::new("cargo").args([
        "build",
        "--quiet",
        "--package",
        "egress-tests",
        "--bin",
        "egress-demo",
    ]))?;
    let target = run::target_dir()?.join("debug");
    // Ctrl-C reaches the demo too (same process group); we only wait for it to clean up.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone()).context("signal handler")?;
    }
    run::status(Command::new(target.join("egress-demo")).env("EGRESS_BIN", target.join("egress")))
}
