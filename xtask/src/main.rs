//! `cargo xtask <task>`: the project's tasks. See README.md.

mod bench;
mod demo;
mod fixture;
mod fuzz;
mod image;
mod lint;
mod plots;
mod run;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly rust-src, bpf-linker, and the apt packages the tests use.
    Setup(setup::SetupArgs),
    /// Setup, lint, build, then every unit, verdict and integration test (needs root).
    Test(test::Options),
    /// Repository hygiene, rustfmt and clippy (-D warnings) for the host and the BPF target.
    Lint,
    /// Setup, build, then a live demo in a throwaway network sandbox (needs root).
    Demo(setup::SetupArgs),
    /// Benchmarks; writes bench/REPORT.md and bench/results.json (needs root).
    Bench(bench::Options),
    /// Build (once) the earlier egress the upgrade tests start from; prints its path.
    Fixture,
    /// Run the cargo-fuzz targets for a while each (nightly; installs cargo-fuzz).
    Fuzz(fuzz::Options),
    /// Build the static binary and the minimal container image (buildah; needs root).
    Image(image::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup(opts) => setup::run(&opts),
        Task::Test(opts) => test::run(&opts),
        Task::Lint => lint::run(),
        Task::Fixture => fixture::run(),
        Task::Demo(opts) => demo::run(&opts),
        Task::Fuzz(opts) => fuzz::run(&opts),
        Task::Bench(opts) => bench::run(&opts),
        Task::Image(opts) => image::run(&opts),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
