//! Attaching the classifier to an interface's egress, adopting a previous attachment, and
//! detaching.
//!
//! TCX (Linux >= 6.6) is preferred: the link is pinned, survives the agent, and a restarted
//! agent swaps its program in with `bpf_link_update`, atomically. Older kernels get a clsact
//! filter at a fixed priority and handle, so a restart replaces exactly that filter in place.
//! Either way egress goes first in the chain and passes with `TC_ACT_UNSPEC`, so programs
//! attached by others keep running and are never removed.

use std::io;

use aya::{
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
    util::KernelVersion,
};
use thiserror::Error;

use crate::pins::{Hook, PinDir};

/// clsact filter priority used on kernels without TCX (1 = evaluated first).
pub const NETLINK_PRIORITY: u16 = 1;
/// clsact filter handle used on kernels without TCX.
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0xe9e5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX when the kernel has it (>= 6.6), clsact otherwise.
    Auto,
    Tcx,
    Netlink,
}

/// How the program ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    TcxNew,
    TcxAdopted,
    Netlink,
}

impl Attached {
    /// The bit of the `ATTACHED` record for this kind of attachment.
    pub fn record(self) -> u32 {
        match self {
            Attached::TcxNew | Attached::TcxAdopted => egress_common::maps::attached::TCX,
            Attached::Netlink => egress_common::maps::attached::CLSACT,
        }
    }
}

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("cannot remove the old link's pin {path}")]
    Unpin {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("interface {iface} does not exist")]
    NoInterface { iface: String },
    #[error("cannot attach to {iface} with {how}")]
    Attach {
        iface: String,
        how: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("cannot pin the link of {iface} at {path}")]
    Pin {
        iface: String,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot adopt the pinned link {path}")]
    Adopt {
        path: String,
        #[source]
        source: LinkError,
    },
    #[error("cannot detach from {iface}")]
    Detach {
        iface: String,
        #[source]
        source: io::Error,
    },
}

impl AttachMode {
    /// Whether this mode attaches with TCX on this kernel.
    fn tcx(self) -> bool {
        match self {
            AttachMode::Auto => tcx_available(),
            AttachMode::Tcx => true,
            AttachMode::Netlink => false,
        }
    }

    /// The bit of the `ATTACHED` record this mode writes on this kernel.
    pub fn record(self) -> u32 {
        if self.tcx() {
            egress_common::maps::attached::TCX
        } else {
            egress_common::maps::attached::CLSACT
        }
    }
}

fn tcx_available() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

fn check_iface(iface: &str) -> Result<(), AttachError> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        return Err(AttachError::NoInterface {
            iface: iface.to_owned(),
        });
    }
    Ok(())
}

/// Attaches `prog` (loaded) to `hook` of `iface`, replacing our own earlier attachment in place
/// if there is one.
pub fn attach(
    prog: &mut SchedClassifier,
    hook: Hook,
    iface: &str,
    pins: &PinDir,
    mode: AttachMode,
) -> Result<Attached, AttachError> {
    check_iface(iface)?;
    if mode.tcx() {
        attach_tcx(prog, hook, iface, pins)
    } else {
        attach_netlink(prog, hook, iface)
    }
}

fn tc_type(hook: Hook) -> TcAttachType {
    match hook {
        Hook::Egress => TcAttachType::Egress,
        Hook::Ingress => TcAttachType::Ingress,
    }
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    hook: Hook,
    iface: &str,
    pins: &PinDir,
) -> Result<Attached, AttachError> {
    let path = pins.link(hook, iface);
    let err = |how| {
        let iface = iface.to_owned();
        move |source| AttachError::Attach { iface, how, source }
    };
    match PinnedLink::from_pin(&path) {
        Ok(pinned) => {
            let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|source| {
                AttachError::Adopt {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            let id = prog.attach_to_link(link).map_err(err("bpf_link_update"))?;
            // The link stays pinned; dropping our handle only closes a file descriptor.
            drop(prog.take_link(id).map_err(err("bpf_link_update"))?);
            Ok(Attached::TcxAdopted)
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {
            let id = prog
                .attach_with_options(
                    iface,
                    tc_type(hook),
                    TcAttachOptions::TcxOrder(LinkOrder::first()),
                )
                .map_err(err("TCX"))?;
            let link = prog.take_link(id).map_err(err("TCX"))?;
            let fd_link = FdLink::try_from(link).map_err(|source| AttachError::Adopt {
                path: path.display().to_string(),
                source,
            })?;
            fd_link.pin(&path).map_err(|source| AttachError::Pin {
                iface: iface.to_owned(),
                path: path.display().to_string(),
                source,
            })?;
            Ok(Attached::TcxNew)
        }
        Err(source) => Err(AttachError::Adopt {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    hook: Hook,
    iface: &str,
) -> Result<Attached, AttachError> {
    let err = |how| {
        let iface = iface.to_owned();
        move |source| AttachError::Attach { iface, how, source }
    };
    // An existing clsact qdisc (ours or anyone's) is kept as it is.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        tracing::debug!(error = %e, iface, "clsact qdisc not added (already present?)");
    }
    let options = || {
        TcAttachOptions::Netlink(NlOptions {
            priority: NETLINK_PRIORITY,
            handle: NETLINK_HANDLE,
            classid: None,
        })
    };
    let id = match SchedClassifierLink::attached(
        iface,
        tc_type(hook),
        NETLINK_PRIORITY,
        NETLINK_HANDLE,
        None,
    )
    .map_err(|_| AttachError::NoInterface {
        iface: iface.to_owned(),
    })
    .and_then(|link| prog.attach_to_link(link).map_err(err("clsact replace")))
    {
        Ok(id) => id,
        Err(_) => prog
            .attach_with_options(iface, tc_type(hook), options())
            .map_err(err("clsact"))?,
    };
    let link = prog.take_link(id).map_err(err("clsact"))?;
    // Dropping a netlink link removes the filter; enforcement must outlive the agent.
    std::mem::forget(link);
    Ok(Attached::Netlink)
}

/// The interface's index now (`None` if it is gone): a deleted and re-created interface has a
/// new one, and no longer carries what was attached to the old.
pub fn ifindex(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface).ok()
}

/// Where egress's program stands on one hook of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// Attached, and first in the TCX chain (or on clsact, where only the interface is seen).
    First,
    /// Attached, but another program runs before it: one that returns a final verdict
    /// (`TCX_PASS`) would let packets leave without egress seeing them.
    Behind,
    /// Not attached: the interface is gone or was re-created, or the link was released.
    Missing,
}

/// Where egress's program stands on `hook` of `iface`, attached there `how` when the interface
/// had index `index`, as far as the agent's capabilities let it ask: the interface must be the
/// same one (same index); a TCX link must still be pinned (the agent holds no handle, so a
/// removed pin is a released link); and where the kernel lets the agent list the TCX chain
/// (listing resolves program ids, which takes CAP_SYS_ADMIN on some kernels), a program of
/// that name must be in it, first. clsact filters cannot be listed through aya 0.14, so there
/// the interface is what is checked.
pub fn presence(hook: Hook, iface: &str, how: Attached, index: u32, pins: &PinDir) -> Presence {
    if ifindex(iface) != Some(index) {
        return Presence::Missing;
    }
    if how == Attached::Netlink {
        return Presence::First;
    }
    if !pins.link(hook, iface).exists() {
        return Presence::Missing;
    }
    match SchedClassifier::query_tcx(iface, tc_type(hook)) {
        Ok((_, programs)) => {
            match programs
                .iter()
                .position(|p| p.name_as_str() == Some(hook.name()))
            {
                Some(0) => Presence::First,
                Some(_) => Presence::Behind,
                None => Presence::Missing,
            }
        }
        // Not allowed to list: the pinned link on the same interface is all there is to see.
        Err(_) => Presence::First,
    }
}

/// Attaches `prog` to `hook` of `iface` again, at the head of the chain, after [`presence`]
/// found it missing or behind another program. On TCX the old link (if any is left) is
/// released first: the kernel refuses the same program twice on one hook ("File exists"), so
/// this cannot be make-before-break; the attach is retried until the kernel has let go of the
/// old link (milliseconds). The moment in between matters little when a program ahead with a
/// final verdict was already bypassing egress; a program ahead that passes packets on costs
/// that moment at each check, if something keeps putting it first.
pub fn reattach(
    prog: &mut SchedClassifier,
    hook: Hook,
    iface: &str,
    pins: &PinDir,
    how: Attached,
) -> Result<Attached, AttachError> {
    check_iface(iface)?;
    if how == Attached::Netlink {
        return attach_netlink(prog, hook, iface);
    }
    let path = pins.link(hook, iface);
    // The agent holds no handle on the link: removing its only pin releases it.
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        return Err(AttachError::Unpin {
            path: path.display().to_string(),
            source: e,
        });
    }
    // The kernel releases an unpinned link after an RCU grace period (and, on 6.5+, from a
    // workqueue); until then it refuses the same program again ("File exists"). Retry for up
    // to a second, so the hook is without egress for milliseconds, not until the next check.
    let mut tries = 0;
    loop {
        match attach_tcx(prog, hook, iface, pins) {
            Err(AttachError::Attach { .. }) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

/// Removes egress from `iface`, both hooks: the pinned TCX links and/or our clsact filters.
/// Returns whether anything was attached.
pub fn detach(iface: &str, pins: &PinDir) -> Result<bool, AttachError> {
    let mut found = false;
    for hook in Hook::ALL {
        found |= detach_hook(hook, iface, pins)?;
    }
    Ok(found)
}

fn detach_hook(hook: Hook, iface: &str, pins: &PinDir) -> Result<bool, AttachError> {
    let mut found = false;
    let path = pins.link(hook, iface);
    match PinnedLink::from_pin(&path) {
        Ok(pinned) => {
            // Unpinning drops the last reference once our descriptor closes: the link goes.
            let fd = pinned.unpin().map_err(|source| AttachError::Detach {
                iface: iface.to_owned(),
                source,
            })?;
            drop(fd);
            found = true;
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AttachError::Adopt {
                path: path.display().to_string(),
                source,
            });
        }
    }
    if check_iface(iface).is_ok()
        && let Ok(link) = SchedClassifierLink::attached(
            iface,
            tc_type(hook),
            NETLINK_PRIORITY,
            NETLINK_HANDLE,
            None,
        )
    {
        use aya::programs::links::Link as _;
        if link.detach().is_ok() {
            found = true;
        }
    }
    Ok(found)
}
