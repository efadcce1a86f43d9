//! `cargo xtask fuzz`: runs the cargo-fuzz targets (fuzz/) for a given time each, starting from
//! the committed seeds. Installs cargo-fuzz if it is missing.

use std::process::Command;

use anyhow::Context as _;

use crate::run;

/// Every fuzz target in fuzz/Cargo.toml.
const TARGETS: &[&str] = &["dns_walk", "packet"];

#[derive(clap::Args)]
pub(crate) struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Run only these targets (default: all).
    targets: Vec<String>,
}

pub(crate) fn run(opts: &Options) -> anyhow::Result<()> {
    if !Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("fuzz: installing cargo-fuzz");
        run::status(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .context("cannot install cargo-fuzz")?;
    }
    let root = run::target_dir()?
        .parent()
        .context("workspace root")?
        .to_owned();
    let fuzz = root.join("fuzz");
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        opts.targets.iter().map(String::as_str).collect()
    };
    for target in targets {
        let corpus = fuzz.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = fuzz.join("seeds").join(target);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz)
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={}", opts.seconds));
        eprintln!("fuzz: {target} for {} s", opts.seconds);
        run::status(&mut cmd).with_context(|| {
            format!("fuzz target {target} failed; the crashing input is in fuzz/artifacts/{target}")
        })?;
    }
    Ok(())
}
