//! The embedded eBPF object, how it is loaded against a pin directory, and the check that the
//! maps pinned there have the layout this version needs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

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

/// What the kernel knows of a map's shape: what must match for a pinned map to be adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    pub kind: u32,
    pub flags: u32,
    pub key: u32,
    pub value: u32,
    pub entries: u32,
}

impl std::fmt::Display for MapDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, flags {:#x}, key size {}, value size {} and {} entries",
            type_name(self.kind),
            self.flags,
            self.key,
            self.value,
            self.entries
        )
    }
}

impl MapDef {
    /// The definition of the map pinned at `path`.
    pub fn pinned(path: &Path) -> Result<Self, LayoutError> {
        let info = MapInfo::from_pin(path).map_err(|source| LayoutError::Inspect {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            // An unknown type reads as u32::MAX: it differs from every type asked for.
            kind: info.map_type().map_or(u32::MAX, |t| t as u32),
            flags: info.map_flags(),
            key: info.key_size(),
            value: info.value_size(),
            entries: info.max_entries(),
        })
    }
}

/// The definition of every map of the embedded object, by name: parsed once per process (the
/// start reads it for the layout record, the migration and the pin check).
pub fn object_defs() -> Result<&'static BTreeMap<String, MapDef>, LayoutError> {
    static DEFS: std::sync::OnceLock<BTreeMap<String, MapDef>> = std::sync::OnceLock::new();
    if let Some(defs) = DEFS.get() {
        return Ok(defs);
    }
    let defs = defs_of(OBJECT)?;
    Ok(DEFS.get_or_init(|| defs))
}

/// The definition of every pinned map of an eBPF object: the global-data maps (`.rodata`,
/// `.bss`, `.data`) are never pinned and are not part of the layout.
pub fn defs_of(object: &[u8]) -> Result<BTreeMap<String, MapDef>, LayoutError> {
    let obj = aya_obj::Object::parse(object).map_err(|source| LayoutError::Object { source })?;
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .map(|(name, m)| {
            let def = MapDef {
                kind: m.map_type(),
                flags: m.map_flags(),
                key: m.key_size(),
                value: m.value_size(),
                entries: m.max_entries(),
            };
            (name.clone(), def)
        })
        .collect())
}

/// Checks every map already pinned under `pins` against the object's definition of it (type,
/// flags, key size, value size, entries). aya adopts a pinned map by its file descriptor without
/// comparing, and a map of another size would then be used as if it were right (a shorter
/// counter array silently drops the new counters; a shorter scratch array leaves a program
/// without its slot), so this runs before every load.
pub fn check_pinned(pins: &PinDir) -> Result<(), LayoutError> {
    check_dir(&pins.maps_dir(), object_defs()?)
}

/// Checks every map pinned in `dir` whose name `defs` holds against its definition there.
pub fn check_dir(dir: &Path, defs: &BTreeMap<String, MapDef>) -> Result<(), LayoutError> {
    for (name, want) in defs {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let have = MapDef::pinned(&path)?;
        if have != *want {
            return Err(LayoutError::Mismatch {
                name: name.clone(),
                path,
                have: have.to_string(),
                want: want.to_string(),
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
pub fn loader(pins: &PinDir) -> EbpfLoader<'static> {
    let mut l = EbpfLoader::new();
    l.default_map_pin_directory(pins.maps_dir());
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
