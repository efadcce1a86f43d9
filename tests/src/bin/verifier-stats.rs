//! Loads every program of the eBPF object and prints the verifier's statistics (instructions
//! processed against the 1M budget, states, stack). On a rejection it prints the end of the
//! verifier log. Used when changing the datapath: `cargo run -p egress-tests --bin verifier-stats`.

use aya::{EbpfLoader, VerifierLogLevel, programs::SchedClassifier};
use egress_tests::TestPins;
use egress_user::ebpf;

fn main() -> anyhow::Result<()> {
    let pins = TestPins::new();
    for name in ["egress", "ingress"] {
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(pins.path())
            .verifier_log_level(VerifierLogLevel::STATS | VerifierLogLevel::DEBUG)
            .load(ebpf::OBJECT)?;
        let prog: &mut SchedClassifier = bpf.program_mut(name).expect("program").try_into()?;
        match prog.load() {
            Ok(()) => println!("{name}: accepted"),
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
