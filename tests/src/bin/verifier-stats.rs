//! Loads every program of the eBPF object and prints the verifier's statistics (instructions
//! processed against the 1M budget, states, stack). On a rejection it prints the end of the
//! verifier log. Used when changing the datapath: `cargo run -p egress-tests --bin verifier-stats`,
//! and by `cargo xtask test --vm` on each kernel of the matrix.

use aya::{EbpfLoader, VerifierLogLevel, programs::Program};
use egress_tests::TestPins;
use egress_user::{
    ebpf,
    pins::{Hook, SockHook},
};

fn main() -> anyhow::Result<()> {
    let pins = TestPins::new();
    let names = Hook::ALL
        .iter()
        .map(|h| h.name())
        .chain(SockHook::ALL.iter().map(|h| h.name()));
    for name in names {
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .verifier_log_level(VerifierLogLevel::STATS | VerifierLogLevel::DEBUG)
            .load(ebpf::OBJECT)?;
        let prog = bpf.program_mut(name).expect("program");
        let loaded = match &mut *prog {
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            other => anyhow::bail!("{name}: unexpected program type {:?}", other.prog_type()),
        }
        .and_then(|()| prog.info());
        match loaded {
            Ok(info) => {
                // The kernel reports how many instructions the verifier processed (of its
                // 1,000,000 budget) since 5.16; `uname -r` ties the figure to the kernel.
                let processed = info
                    .verified_instruction_count()
                    .map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                println!(
                    "{name}: accepted on Linux {}: {processed} instructions processed, {} instructions loaded",
                    kernel_release(),
                    info.size_translated().unwrap_or(0) / 8
                );
            }
            Err(aya::programs::ProgramError::LoadError {
                io_error,
                verifier_log,
            }) => {
                let log = verifier_log.to_string();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines.len().saturating_sub(
                    std::env::var("TAIL")
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(40),
                );
                println!("{name}: REJECTED ({io_error})");
                for l in &lines[tail..] {
                    println!("  {}", &l[..l.len().min(200)]);
                }
                let mut counts = std::collections::BTreeMap::<&str, usize>::new();
                for l in &lines {
                    if let Some(at) = l.find(" @ ") {
                        *counts.entry(&l[at + 3..]).or_default() += 1;
                    }
                }
                let mut by: Vec<_> = counts.into_iter().collect();
                by.sort_by_key(|e| std::cmp::Reverse(e.1));
                for l in lines.iter().filter(|l| {
                    l.contains("func#") || l.contains("Func#") || l.contains("Validating")
                }) {
                    println!("  {l}");
                }
                println!("  most visited source lines: {:?}", &by[..by.len().min(15)]);
            }
            Err(e) => println!("{name}: {e}"),
        }
    }
    Ok(())
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}
