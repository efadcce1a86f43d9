//! Learning at the sockets (`egress run --dns-cgroup PATH`): the two `cgroup_skb` programs
//! attached to a cgroup v2, usually the root (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
//! hybrid hosts), so that the DNS answers of every pod are learned wherever their DNS is served.
//! See `egress-ebpf/src/sockets.rs` for what the programs do and `docs/kubernetes.md` for why.
//!
//! The links are pinned, so learning goes on while the agent is down, like enforcement. A
//! restart attaches the new programs first and only then drops the old links (make before
//! break: both run for a moment, and learning twice is harmless).

use std::{
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError,
        links::{FdLink, LinkError},
    },
};
use thiserror::Error;

use crate::pins::{PinDir, SockHook};

/// `CGROUP2_SUPER_MAGIC` (include/uapi/linux/magic.h).
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, Error)]
pub enum SocketsError {
    #[error("cannot open the cgroup {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a cgroup v2 directory (filesystem {fs_type:#x}); on a hybrid host the v2 hierarchy is usually /sys/fs/cgroup/unified"
    )]
    NotCgroup2 { path: PathBuf, fs_type: i64 },
    #[error("program {name} is missing from the eBPF object or is not a cgroup_skb program")]
    Program {
        name: &'static str,
        #[source]
        source: Option<ProgramError>,
    },
    #[error(
        "the kernel rejected the {name} program (the agent needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)"
    )]
    Load {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "cannot attach {name} to the cgroup {path} (another program attached there without BPF_F_ALLOW_MULTI?)"
    )]
    Attach {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("the link of {name} is not a file-descriptor link")]
    Link {
        name: &'static str,
        #[source]
        source: LinkError,
    },
    #[error("cannot pin the link of {name} at {path}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot remove the old link pin {path}")]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The cgroup directory, checked to be on cgroup v2.
fn open_cgroup(cgroup: &Path) -> Result<std::fs::File, SocketsError> {
    let dir = std::fs::File::open(cgroup).map_err(|source| SocketsError::Open {
        path: cgroup.to_owned(),
        source,
    })?;
    let fs_type = nix::sys::statfs::fstatfs(dir.as_fd())
        .map_err(|e| SocketsError::Open {
            path: cgroup.to_owned(),
            source: e.into(),
        })?
        .filesystem_type()
        .0 as i64;
    if fs_type != CGROUP2_SUPER_MAGIC {
        return Err(SocketsError::NotCgroup2 {
            path: cgroup.to_owned(),
            fs_type,
        });
    }
    Ok(dir)
}

/// Opens the cgroup (checked) and loads (verifies) both socket programs, attaching nothing:
/// the agent does this before anything in force changes (an upgrade's point of no return comes
/// after). The cgroup is for [`attach`].
pub fn verify(ebpf: &mut Ebpf, cgroup: &Path) -> Result<std::fs::File, SocketsError> {
    let dir = open_cgroup(cgroup)?;
    for hook in SockHook::ALL {
        let name = hook.name();
        program(ebpf, name)?
            .load()
            .map_err(|source| SocketsError::Load { name, source })?;
    }
    Ok(dir)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSkb, SocketsError> {
    ebpf.program_mut(name)
        .ok_or(SocketsError::Program { name, source: None })?
        .try_into()
        .map_err(|source| SocketsError::Program {
            name,
            source: Some(source),
        })
}

/// Attaches both socket programs of `ebpf`, loaded by [`verify`], to the cgroup `dir` (at
/// `cgroup`) and pins their links, replacing the links of a previous run.
pub fn attach(
    ebpf: &mut Ebpf,
    dir: &std::fs::File,
    cgroup: &Path,
    pins: &PinDir,
) -> Result<(), SocketsError> {
    for hook in SockHook::ALL {
        let name = hook.name();
        let prog = program(ebpf, name)?;
        let attach_type = match hook {
            SockHook::Query => CgroupSkbAttachType::Egress,
            SockHook::Answer => CgroupSkbAttachType::Ingress,
        };
        // `Single` means flags 0, which is what a cgroup link takes: the kernel attaches links
        // as multi-attach anyway (it rejects any other flag, aya-rs/aya#1078), so programs of
        // systemd or a CNI on the same cgroup keep running beside ours.
        let attach_err = |source| SocketsError::Attach {
            name,
            path: cgroup.to_owned(),
            source,
        };
        let id = prog
            .attach(dir, attach_type, CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| SocketsError::Link { name, source })?;
        // Make before break: the old link (a previous run's) goes only now.
        let path = pins.sock_link(hook);
        remove_pin(&path)?;
        link.pin(&path)
            .map_err(|source| SocketsError::Pin { name, path, source })?;
        tracing::info!(program = name, cgroup = %cgroup.display(), "attached to the cgroup");
    }
    Ok(())
}

/// Removes the socket programs' links of a previous run (the agent now learns at the
/// interfaces); without their pins the links are released and the programs detached.
pub fn detach(pins: &PinDir) -> Result<(), SocketsError> {
    for hook in SockHook::ALL {
        remove_pin(&pins.sock_link(hook))?;
    }
    Ok(())
}

fn remove_pin(path: &Path) -> Result<(), SocketsError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SocketsError::Unpin {
            path: path.to_owned(),
            source,
        }),
    }
}
