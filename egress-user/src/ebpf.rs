//! The embedded eBPF object and how it is loaded against a pin directory.

use aya::{Ebpf, EbpfError, EbpfLoader};

use crate::pins::PinDir;

/// The classifier object built from `egress-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

/// Loads the object; maps already pinned under `pins` are reused (adopted) and the others are
/// created and pinned there, so a restart keeps learned addresses, flows and counters.
pub fn load(pins: &PinDir) -> Result<Ebpf, EbpfError> {
    loader(pins).load(OBJECT)
}

/// The loader [`load`] uses, for callers that adjust it (benchmarks size maps up).
pub fn loader(pins: &PinDir) -> EbpfLoader<'_> {
    let mut l = EbpfLoader::new();
    l.default_map_pin_directory(pins.root());
    l
}

/// Name of the do-nothing baseline program in [`OBJECT`] (benchmarks only).
pub const EMPTY_PROGRAM: &str = "empty";
