//! The datapath's layout: which maps exist and how they are shaped, its version and
//! fingerprint, the record pinned beside them, and what a start finds under the pin directory.
//!
//! A layout is the set of map definitions of the embedded object (type, flags, key size, value
//! size, entries). Its canonical text (one line per map, sorted) is committed per version as
//! `egress-user/layouts/v<N>.txt`; a unit test fails when the object's text differs from
//! [`VERSION`]'s file, so a layout change cannot ship without a new version and a migration
//! ([`migrate`]). See docs/design.md, *Layouts and upgrades*.

pub mod migrate;
pub mod v0;

use std::{collections::BTreeMap, path::Path};

use aya::maps::{Array, Map, MapData, MapError};
use thiserror::Error;

use crate::{
    ebpf::{self, LayoutError, MapDef},
    pins::PinDir,
};

/// The layout of this build. Layout 0 is every egress before layout versions (maps pinned in the
/// pin directory itself); layout 1 pins them under `v1/` and adds the TLS maps, the flow cache,
/// 16-byte flow values and 48 counters.
pub const VERSION: u32 = 1;

/// The committed text of each layout this build knows, by version.
pub const TEXTS: [&str; 2] = [
    include_str!("../../layouts/v0.txt"),
    include_str!("../../layouts/v1.txt"),
];

/// The name of the record's pin, at the top of the pin directory.
pub const RECORD_PIN: &str = "LAYOUT";

/// `b"EGRESSLY"`, little-endian: a record written by egress.
pub const MAGIC: u64 = u64::from_le_bytes(*b"EGRESSLY");

/// [`Record::state`].
pub mod state {
    /// The layout `version` is in force; nothing is under way.
    pub const STABLE: u32 = 1;
    /// A migration from `version` to `target` is under way; `step` is the last step done.
    pub const MIGRATING: u32 = 2;
}

/// The layout record: a 1-entry array pinned as `LAYOUT`, and again as the guard in place of
/// layout 0's `CONFIG`. 128 bytes: no `Config` of any egress had this size (24 to 64 bytes), so
/// every earlier build's check of its `CONFIG` pin fails on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub magic: u64,
    /// The layout in force (the source while migrating).
    pub version: u32,
    /// The layout being migrated to (= `version` when stable).
    pub target: u32,
    pub fingerprint: u64,
    pub target_fingerprint: u64,
    /// One of [`state`].
    pub state: u32,
    /// The last migration step done ([`migrate::Step`]).
    pub step: u32,
    /// The name-hash key of the policy maps, carried over so that no learned address is
    /// revoked by a key change.
    pub hash_k0: u64,
    pub hash_k1: u64,
    /// When the migration began (seconds since the epoch), for `egress status`.
    pub started_unix_s: u64,
    /// When the migration began, `CLOCK_BOOTTIME` ns: `REVOKED` stamps from then on are the
    /// migration's own cuts (`revoked_connections: cut`), kept across a crash and a rebuild.
    pub began_ns: u64,
    pub _reserved: [u64; 7],
}

// SAFETY: plain old data, `repr(C)`, no padding (asserted below).
unsafe impl aya::Pod for Record {}
const _: () = assert!(size_of::<Record>() == 128);

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("cannot create the layout record {path}")]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot pin the layout record at {path}")]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot open the layout record {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: MapError,
    },
    #[error("cannot replace {path} with the layout guard")]
    Guard {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the layout record {path} was not written by egress (magic {magic:#x}); nothing was changed"
    )]
    Foreign {
        path: std::path::PathBuf,
        magic: u64,
    },
}

/// The canonical text of a set of definitions: `NAME type flags key value entries`, sorted.
pub fn text(defs: &BTreeMap<String, MapDef>) -> String {
    defs.iter()
        .map(|(name, d)| {
            format!(
                "{name} {} {:#x} {} {} {}\n",
                d.kind, d.flags, d.key, d.value, d.entries
            )
        })
        .collect()
}

/// Parses a committed layout text back into definitions.
pub fn parse(text: &str) -> BTreeMap<String, MapDef> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| -> u32 {
                let v = f[i];
                match v.strip_prefix("0x") {
                    Some(hex) => u32::from_str_radix(hex, 16),
                    None => v.parse(),
                }
                .unwrap_or_else(|_| panic!("layout line {l:?}: field {i} is not a number"))
            };
            let def = MapDef {
                kind: n(1),
                flags: n(2),
                key: n(3),
                value: n(4),
                entries: n(5),
            };
            (f[0].to_owned(), def)
        })
        .collect()
}

/// The definitions of layout `version` as committed.
pub fn defs(version: u32) -> BTreeMap<String, MapDef> {
    parse(TEXTS[version as usize])
}

/// FNV-1a, 64 bits, of a layout text: tells apart two builds under one version number.
pub fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// This build's fingerprint (of the embedded object's definitions).
pub fn current_fingerprint() -> Result<u64, LayoutError> {
    Ok(fingerprint(&text(ebpf::object_defs()?)))
}

/// What a start finds under the pin directory.
#[derive(Debug, PartialEq, Eq)]
pub enum OnDisk {
    /// No maps and no record: a first start.
    Empty,
    /// Maps pinned in the directory itself and no record: layout 0.
    Flat,
    /// A layout record.
    Recorded(Record),
}

/// Reads what is pinned under `pins` without changing anything.
pub fn detect(pins: &PinDir) -> Result<OnDisk, RecordError> {
    if pins.layout_record().exists() {
        return Ok(OnDisk::Recorded(read(pins)?));
    }
    let flat = v0::defs().keys().any(|name| pins.flat_map(name).exists());
    Ok(if flat { OnDisk::Flat } else { OnDisk::Empty })
}

fn open(path: &Path) -> Result<Array<MapData, Record>, RecordError> {
    let err = |source| RecordError::Open {
        path: path.to_owned(),
        source,
    };
    let data = MapData::from_pin(path).map_err(err)?;
    Array::try_from(Map::Array(data)).map_err(err)
}

/// The record pinned under `pins`.
pub fn read(pins: &PinDir) -> Result<Record, RecordError> {
    let path = pins.layout_record();
    let r = open(&path)?
        .get(&0, 0)
        .map_err(|source| RecordError::Open {
            path: path.clone(),
            source,
        })?;
    if r.magic != MAGIC {
        return Err(RecordError::Foreign {
            path,
            magic: r.magic,
        });
    }
    Ok(r)
}

/// Writes the record, creating and pinning it (and the guard) first if it does not exist.
pub fn write(pins: &PinDir, record: &Record) -> Result<(), RecordError> {
    let path = pins.layout_record();
    if !path.exists() {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
            4,
            size_of::<Record>() as u32,
            1,
            0,
        );
        let data =
            MapData::create(def, RECORD_PIN, None).map_err(|source| RecordError::Create {
                path: path.clone(),
                source,
            })?;
        let mut map: Array<MapData, Record> =
            Array::try_from(Map::Array(data)).map_err(|source| RecordError::Create {
                path: path.clone(),
                source,
            })?;
        map.set(0, record, 0)
            .map_err(|source| RecordError::Create {
                path: path.clone(),
                source,
            })?;
        // Written before it is pinned: nobody ever reads a record without magic.
        let pin_at = PinDir::staging(&path);
        let _ = std::fs::remove_file(&pin_at);
        map.pin(&pin_at).map_err(|source| RecordError::Pin {
            path: pin_at.clone(),
            source,
        })?;
        return std::fs::rename(&pin_at, &path).map_err(|source| RecordError::Guard {
            path: path.clone(),
            source,
        });
    }
    let mut map = open(&path)?;
    map.set(0, record, 0)
        .map_err(|source| RecordError::Open { path, source })
}

/// Pins the record again as the guard, in place of layout 0's `CONFIG`: a rename over it, so the
/// name is never missing (a layout-0 build finding no `CONFIG` would create an empty one and
/// adopt the rest).
pub fn guard(pins: &PinDir) -> Result<(), RecordError> {
    let next = PinDir::staging(&pins.guard());
    let _ = std::fs::remove_file(&next);
    let data = MapData::from_pin(pins.layout_record()).map_err(|source| RecordError::Open {
        path: pins.layout_record(),
        source,
    })?;
    data.pin(&next).map_err(|source| RecordError::Pin {
        path: next.clone(),
        source,
    })?;
    std::fs::rename(&next, pins.guard()).map_err(|source| RecordError::Guard {
        path: pins.guard(),
        source,
    })
}

/// Whether the guard is in place (the pin at layout 0's `CONFIG` is the record).
pub fn guarded(pins: &PinDir) -> bool {
    let id = |p: &Path| aya::maps::MapInfo::from_pin(p).ok().map(|i| i.id());
    let record = id(&pins.layout_record());
    record.is_some() && record == id(&pins.guard())
}

/// A stable record of this build's layout.
pub fn stable(fingerprint: u64, key: (u64, u64)) -> Record {
    Record {
        magic: MAGIC,
        version: VERSION,
        target: VERSION,
        fingerprint,
        target_fingerprint: fingerprint,
        state: state::STABLE,
        step: 0,
        hash_k0: key.0,
        hash_k1: key.1,
        ..Record::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_text_is_the_committed_one() {
        let now = text(ebpf::object_defs().unwrap());
        if std::env::var_os("EGRESS_BLESS_LAYOUT").is_some() {
            let path = format!("{}/layouts/v{VERSION}.txt", env!("CARGO_MANIFEST_DIR"));
            std::fs::write(&path, &now).unwrap();
        }
        assert_eq!(
            now, TEXTS[VERSION as usize],
            "the eBPF object's maps changed: bump layout::VERSION, commit layouts/v<N>.txt with this text and add a migration step (docs/design.md, *Layouts and upgrades*)"
        );
    }

    #[test]
    fn texts_round_trip_and_fingerprints_differ() {
        for t in TEXTS {
            assert_eq!(text(&parse(t)), t);
        }
        assert_ne!(fingerprint(TEXTS[0]), fingerprint(TEXTS[1]));
    }
}
