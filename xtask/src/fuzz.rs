//! `cargo xtask fuzz`: runs the cargo-fuzz targets (fuzz/) for a given time each, starting from
//! the committed seeds. Installs cargo-fuzz if it is missing.

use std::process::Command;

use anyhow::Context as _;

use crate::run;

/// Every fuzz target in fuzz/Cargo.toml.
const TARGETS: &[&str] = &[
    "dns_walk",
    "packet",
    "dns_learn",
    "dns_tcp",
    "policy",
    "tls_hello",
];

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
    let root = run::workspace_root()?;
    let fuzz = root.join("fuzz");
    let targets: Vec<&str> = if opts.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        opts.targets.iter().map(String::as_str).collect()
    };
    let mut summary = Vec::new();
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
        // Above libFuzzer's default of 4,096 bytes: the bounds the targets check (a DNS-over-TCP
        // message of 65,535 bytes, a 64 KiB segment) must be reachable.
        cmd.arg("--")
            .arg("-max_len=140000")
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg("-print_final_stats=1");
        eprintln!("fuzz: {target} for {} s", opts.seconds);
        let out = cmd
            .stderr(std::process::Stdio::piped())
            .output()
            .context("cannot run cargo fuzz")?;
        let log = String::from_utf8_lossy(&out.stderr);
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .map_or("?", str::trim)
                .to_owned()
        };
        let line = format!(
            "{target}: {} executions in {} s, peak RSS {} MiB{}",
            stat("number_of_executed_units"),
            opts.seconds,
            stat("peak_rss_mb"),
            if out.status.success() { "" } else { ", FAILED" }
        );
        // Printed at once too: a later target's failure must not lose this one's numbers.
        eprintln!("fuzz: {line}");
        summary.push(line);
        if !out.status.success() {
            eprintln!("{log}");
            anyhow::bail!(
                "fuzz target {target} failed; the crashing input is in fuzz/artifacts/{target}"
            );
        }
    }
    for line in &summary {
        eprintln!("fuzz: {line}");
    }
    Ok(())
}
