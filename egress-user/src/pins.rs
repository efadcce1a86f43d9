//! The one place that knows where things are pinned.
//!
//! Layout under the pin directory (default `/sys/fs/bpf/egress`):
//! - `v<N>/`: one file per map of layout N ([`crate::layout::VERSION`]), named as in
//!   `egress_common::maps::names` (aya pins by name). Layout 0 (egress before layout versions)
//!   pinned its maps in the directory itself; [`PinDir::flat_map`] names those;
//! - `LAYOUT`: the layout record (version, fingerprint, migration journal), and the same map
//!   pinned again as `CONFIG`, the guard that makes layout-0 builds refuse these pins;
//! - `prog_egress`, `prog_ingress`: the enforcing and the DNS-learning programs;
//! - `link_egress_<iface>`, `link_ingress_<iface>`: their TCX links (kernels >= 6.6);
//! - `link_sock_query`, `link_sock_answer`: the socket programs' cgroup links.
//!
//! Links and program pins stay at the top whatever the layout, so that an upgrade swaps the
//! program inside the same link.

use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

/// Default pin directory.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/egress";
/// Where the kernel's BPF filesystem is conventionally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `include/uapi/linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum PinError {
    #[error(
        "pin directory {path} is on a {fs_type:#x} filesystem, not a BPF filesystem (bpffs); choose a directory under a bpffs mount such as /sys/fs/bpf"
    )]
    NotBpffs { path: PathBuf, fs_type: i64 },
    #[error("cannot mount a BPF filesystem on {BPFFS_ROOT}")]
    Mount {
        #[source]
        source: nix::Error,
    },
    #[error(
        "another egress agent runs with the pin directory {path} (it holds its lock): stop it first. Two agents on one datapath would undo each other's writes; on Kubernetes keep the DaemonSet's maxSurge at 0"
    )]
    Locked { path: PathBuf },
    #[error("cannot inspect or create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The two TC hooks egress uses, each with its own program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Enforcement (and DNS query tracking).
    Egress,
    /// DNS answer learning.
    Ingress,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Ingress, Hook::Egress];

    /// Also the program's name in the eBPF object.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        }
    }
}

/// The two socket-level programs of learning at the sockets (`egress run --dns-cgroup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockHook {
    /// `cgroup_skb/egress`: remembers the queries.
    Query,
    /// `cgroup_skb/ingress`: learns the answers.
    Answer,
}

impl SockHook {
    /// The answer side first, so no query is remembered that no program would match.
    pub const ALL: [SockHook; 2] = [SockHook::Answer, SockHook::Query];

    /// Also the program's name in the eBPF object.
    pub fn name(self) -> &'static str {
        match self {
            SockHook::Query => "sock_query",
            SockHook::Answer => "sock_answer",
        }
    }
}

#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where this version's maps are pinned: `v<N>/` of [`crate::layout::VERSION`].
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(format!("v{}", crate::layout::VERSION))
    }

    /// This version's pin of the map `name`.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    /// The pin of the map `name` of layout 0, which pinned maps in the directory itself.
    pub fn flat_map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The layout record ([`crate::layout::Record`]).
    pub fn layout_record(&self) -> PathBuf {
        self.root.join(crate::layout::RECORD_PIN)
    }

    /// The layout record pinned again where layout 0 keeps its `CONFIG` map, so that a
    /// layout-0 build finds a map of another size there and refuses before it attaches.
    pub fn guard(&self) -> PathBuf {
        self.root.join(egress_common::maps::names::CONFIG)
    }

    /// Where a pin for `path` is made before it is renamed over `path` (so that `path` is never
    /// missing or half-written).
    pub fn staging(path: &Path) -> PathBuf {
        let mut name = path.file_name().unwrap_or_default().to_owned();
        name.push("_next");
        path.with_file_name(name)
    }

    pub fn program(&self, hook: Hook) -> PathBuf {
        self.root.join(format!("prog_{}", hook.name()))
    }

    pub fn link(&self, hook: Hook, iface: &str) -> PathBuf {
        self.root.join(format!("link_{}_{iface}", hook.name()))
    }

    /// The pinned link of a socket-level program to the learning cgroup.
    pub fn sock_link(&self, hook: SockHook) -> PathBuf {
        self.root.join(format!("link_{}", hook.name()))
    }

    /// Interfaces with a pinned TCX link in this directory.
    pub fn linked_interfaces(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut ifaces: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("link_egress_").map(str::to_owned))
            .collect();
        ifaces.sort();
        ifaces
    }

    /// An exclusive lock on the directory, for an agent's life: released by the kernel when the
    /// process ends, even on `kill -9`. Fails at once if another agent holds it.
    pub fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, PinError> {
        let dir = std::fs::File::open(&self.root).map_err(|source| PinError::Io {
            path: self.root.clone(),
            source,
        })?;
        nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
            |(_, e)| match e {
                nix::errno::Errno::EWOULDBLOCK => PinError::Locked {
                    path: self.root.clone(),
                },
                e => PinError::Io {
                    path: self.root.clone(),
                    source: e.into(),
                },
            },
        )
    }

    /// Makes sure the directory exists on a BPF filesystem. If `/sys/fs/bpf` itself is not one
    /// (a minimal host or container), a bpffs is mounted there first; a pin directory on any
    /// other non-bpffs filesystem is an error, because pins there would be impossible.
    pub fn ensure(&self) -> Result<(), PinError> {
        let root = Path::new(BPFFS_ROOT);
        if self.root.starts_with(root) && root.is_dir() && fs_type(root)? != BPF_FS_MAGIC {
            // Two processes starting at once must not both mount: the second bpffs would hide
            // the first, and pins made in it. An exclusive lock on the (sysfs) directory
            // serializes check-and-mount; the loser sees the bpffs and mounts nothing.
            let dir = std::fs::File::open(root).map_err(|source| PinError::Io {
                path: root.to_owned(),
                source,
            })?;
            let _lock = nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusive).map_err(
                |(_, e)| PinError::Io {
                    path: root.to_owned(),
                    source: e.into(),
                },
            )?;
            if fs_type(root)? != BPF_FS_MAGIC {
                nix::mount::mount(
                    Some("bpf"),
                    root,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .map_err(|source| PinError::Mount { source })?;
                tracing::info!(path = BPFFS_ROOT, "mounted a BPF filesystem");
            }
        }
        std::fs::create_dir_all(&self.root).map_err(|source| PinError::Io {
            path: self.root.clone(),
            source,
        })?;
        std::fs::create_dir_all(self.maps_dir()).map_err(|source| PinError::Io {
            path: self.maps_dir(),
            source,
        })?;
        let fs = fs_type(&self.root)?;
        if fs != BPF_FS_MAGIC {
            return Err(PinError::NotBpffs {
                path: self.root.clone(),
                fs_type: fs,
            });
        }
        Ok(())
    }
}

fn fs_type(path: &Path) -> Result<i64, PinError> {
    let st = nix::sys::statfs::statfs(path).map_err(|e| PinError::Io {
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok(st.filesystem_type().0 as i64)
}
