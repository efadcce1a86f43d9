//! The embedded eBPF object, how it is loaded against a pin directory, and the check that the
//! maps pinned there have the layout this version needs.

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{MapError, MapInfo},
};
use thiserror::Error;

use crate::pins::PinDir;

/// The classifier object built from `egress-ebpf` by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-ebpf"));

/// Why the maps pinned under a directory cannot be adopted by this version.
#[derive(Debug, Error)]
pub enum LayoutError {
    #[error("cannot parse the embedded eBPF object")]
    Object {
        #[source]
        source: aya_obj::ParseError,
    },
    #[error("cannot inspect the pinned map {path}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    #[error(
        "map {name} pinned at {path} has {have}, where this version of egress needs {want}: it was pinned by another egress version. Nothing was changed and the pinned datapath keeps enforcing; to replace it run `egress detach --all` first (enforcement stops until this agent is ready; see docs/operations.md)"
    )]
    Mismatch {
        name: String,
        path: PathBuf,
        have: String,
        want: String,
    },
}

/// The kernel's name of a map type (`BPF_MAP_TYPE_*` as aya names it), or its number.
fn type_name(kind: u32) -> String {
    aya_obj::generated::bpf_map_type::try_from(kind)
        .ok()
        .and_then(|t| aya::maps::MapType::try_from(t).ok())
        .map_or_else(|| kind.to_string(), |t| format!("{t:?}"))
}

/// Checks every map already pinned under `pins` against the object's definition of it (type,
/// flags, key size, value size, entries). aya adopts a pinned map by its file descriptor without
/// comparing, and a map of another size would then be used as if it were right (a shorter
/// counter array silently drops the new counters; a shorter scratch array leaves a program
/// without its slot), so this runs before every load.
pub fn check_pinned(pins: &PinDir) -> Result<(), LayoutError> {
    let obj = aya_obj::Object::parse(OBJECT).map_err(|source| LayoutError::Object { source })?;
    let mut names: Vec<&String> = obj.maps.keys().collect();
    names.sort();
    for name in names {
        let map = &obj.maps[name];
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LayoutError::Inspect {
            path: path.clone(),
            source,
        })?;
        let describe = |kind: u32, flags: u32, key: u32, value: u32, entries: u32| {
            format!(
                "type {}, flags {flags:#x}, key size {key}, value size {value} and {entries} entries",
                type_name(kind)
            )
        };
        // An unknown type reads as u32::MAX: it differs from every type the object asks for.
        let pinned_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        let have = describe(
            pinned_type,
            info.map_flags(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let want = describe(
            map.map_type(),
            map.map_flags(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
        );
        if have != want {
            return Err(LayoutError::Mismatch {
                name: name.clone(),
                path,
                have,
                want,
            });
        }
    }
    Ok(())
}

/// Loads the object; maps already pinned under `pins` are reused (adopted) and the others are
/// created and pinned there, so a restart keeps learned addresses, flows and counters. Call
/// [`check_pinned`] first.
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
/// The known-flow path cut short after the header parse, and after the parse and one flow-table
/// lookup (benchmarks only: the floor of the path, see `egress-ebpf/src/floor.rs`).
pub const FLOOR_PROGRAMS: [&str; 2] = ["floor_parse", "floor_lookup"];
/// A program that passes with a final verdict, ending the TCX chain (tests only, see
/// `egress-ebpf`).
pub const FINAL_PASS_PROGRAM: &str = "final_pass";
