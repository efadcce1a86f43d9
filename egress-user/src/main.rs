//! `egress`: a transparent eBPF egress enforcer. See README.md.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use egress_user::{
    agent, attach,
    pins::{DEFAULT_PIN_DIR, PinDir},
    policy::{self, Mode},
    status,
};

#[derive(Parser)]
#[command(
    name = "egress",
    version,
    about = "Allow outbound HTTPS only to the names and CIDRs in a policy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load, pin and attach the datapath, apply the policy, and keep it current.
    Run {
        /// Interface whose egress is enforced (repeat for several). Default: the interfaces
        /// that carry the IPv4 and IPv6 default routes.
        #[arg(long = "iface")]
        ifaces: Vec<String>,
        /// Policy file (YAML); see docs/policy.md.
        #[arg(long)]
        policy: PathBuf,
        /// Directory on a BPF filesystem for maps, program and links.
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, default_value = "127.0.0.1:9090")]
        metrics_addr: SocketAddr,
        /// Override the policy's mode.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// How to attach: TCX links (Linux >= 6.6) or a clsact filter; auto picks by kernel.
        #[arg(long, value_enum, default_value = "auto")]
        attach: attach::AttachMode,
        /// Learn DNS answers at the sockets of every process in this cgroup v2 directory (the
        /// node's root cgroup, e.g. /sys/fs/cgroup, so pods' answers are learned wherever their
        /// DNS is served; see docs/kubernetes.md) instead of at the interfaces.
        #[arg(long, value_name = "CGROUP")]
        dns_cgroup: Option<PathBuf>,
        /// A resolv.conf whose nameservers are trusted when the policy has no `resolvers:`
        /// (repeat for several; on Kubernetes the pod's, which names the cluster DNS Service,
        /// and the node's).
        #[arg(long = "resolv-conf", value_name = "FILE", default_value = egress_user::apply::SYSTEM_RESOLV_CONF)]
        resolv_confs: Vec<PathBuf>,
    },
    /// Validate a policy file and print it normalized.
    Check { file: PathBuf },
    /// List the built-in presets, or print one as a policy fragment.
    Presets {
        /// A preset to print (default: list them all).
        name: Option<String>,
    },
    /// Show what the pinned maps hold (works without a running agent).
    Status {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a policy fragment with the names that were denied (or would have been, in audit
    /// mode), read from the pinned record; see docs/operations.md "Audit, then enforce".
    Suggest {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Forget the recorded destinations after printing them.
        #[arg(long)]
        reset: bool,
    },
    /// Remove egress from interfaces; with no interface left, remove every pin.
    Detach {
        /// An interface to detach from (repeat for several).
        #[arg(
            long = "iface",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ifaces: Vec<String>,
        /// Every interface egress is attached to, the socket programs, and every pin: egress
        /// is gone from the node.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            ifaces,
            policy,
            pin_dir,
            metrics_addr,
            mode,
            attach,
            dns_cgroup,
            resolv_confs,
        } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(agent::run(agent::RunOptions {
                ifaces,
                policy,
                pin_dir,
                metrics_addr,
                mode,
                attach,
                dns_cgroup,
                resolv_confs,
            }))?;
            Ok(())
        }
        Command::Check { file } => {
            let mut p = policy::load(&file)?;
            for w in egress_user::warnings::policy(&p) {
                eprintln!("warning: {}: {w}", file.display());
            }
            // The normalized policy is what the agent runs: without `resolvers:` that is the
            // nameservers of /etc/resolv.conf, which it reads again at every start and reload.
            if p.resolvers.is_none() {
                let system = egress_user::apply::resolvers(
                    &p,
                    &[egress_user::apply::SYSTEM_RESOLV_CONF.into()],
                );
                println!(
                    "# resolvers: not in {}, so the nameservers of {} (read again at every start and reload; `egress run --resolv-conf` names other files){}",
                    file.display(),
                    egress_user::apply::SYSTEM_RESOLV_CONF,
                    if system.is_empty() {
                        "; it lists none, so no name will be learned"
                    } else {
                        ""
                    }
                );
                p.resolvers = Some(system);
            }
            print!("{}", serde_saphyr::to_string(&p)?);
            Ok(())
        }
        Command::Presets { name: None } => {
            print!("{}", egress_user::presets::list());
            Ok(())
        }
        Command::Presets { name: Some(name) } => match egress_user::presets::get(&name) {
            Some(p) => {
                print!("{}", p.fragment());
                Ok(())
            }
            None => anyhow::bail!(
                "unknown preset {name:?}: the presets are {}",
                egress_user::presets::known()
            ),
        },
        Command::Status { pin_dir, json } => {
            let s = status::collect(&PinDir::new(pin_dir))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", status::render(&s));
            }
            Ok(())
        }
        Command::Suggest { pin_dir, reset } => {
            let pins = PinDir::new(&pin_dir);
            let mut dp = egress_user::datapath::Datapath::open_pinned(&pins)
                .with_context(|| format!("no egress state under {}", pin_dir.display()))?;
            print!(
                "{}",
                egress_user::suggest::fragment(&dp.denied()?, &pin_dir.display().to_string())
            );
            if reset {
                let n = dp.clear_denied()?;
                eprintln!("forgot {n} recorded destinations");
            }
            Ok(())
        }
        Command::Detach {
            ifaces,
            all,
            pin_dir,
        } => detach(&PinDir::new(&pin_dir), ifaces, all),
    }
}

/// `egress detach`: removes egress from `ifaces` (or, with `all`, from every interface it is
/// recorded or pinned on, and the socket programs); when no interface is left, removes every
/// pin and the directory.
fn detach(pins: &PinDir, ifaces: Vec<String>, all: bool) -> anyhow::Result<()> {
    // The attachment record lives in the pinned maps. Pins made by an older egress (or maps
    // that cannot be opened) have none: then clsact filters on other interfaces are unknown,
    // and the pins are kept unless everything is being removed.
    let mut dp = match egress_user::datapath::Datapath::open_pinned(pins) {
        Ok(dp) => Some(dp),
        Err(e) => {
            if pins.root().exists() {
                eprintln!(
                    "warning: no attachment record under {} ({e}); clsact filters on other interfaces cannot be listed",
                    pins.root().display()
                );
            }
            None
        }
    };
    let record_known = dp.is_some() || !pins.root().exists();
    let recorded = |dp: &Option<egress_user::datapath::Datapath>| -> anyhow::Result<Vec<String>> {
        Ok(match dp {
            Some(dp) => dp.recorded_interfaces(pins)?,
            None => pins.linked_interfaces(),
        })
    };
    let ifaces = if all {
        // Every interface of this namespace too: a clsact filter egress left without a record
        // (an older version) is found by its fixed priority and handle.
        let mut every = recorded(&dp)?;
        every.extend(
            nix::net::if_::if_nameindex()
                .map(|list| {
                    list.iter()
                        .map(|i| i.name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        every.sort();
        every.dedup();
        every
    } else {
        ifaces
    };
    for iface in &ifaces {
        if attach::detach(iface, pins)? {
            eprintln!("detached from {iface}");
        } else if !all {
            eprintln!("nothing attached to {iface}");
        }
        if let Some(dp) = dp.as_mut() {
            dp.forget_attached(iface)?;
        }
    }
    let left = recorded(&dp)?;
    if !left.is_empty() {
        eprintln!(
            "still attached to {}; the pins under {} stay",
            left.join(", "),
            pins.root().display()
        );
        return Ok(());
    }
    if !all && !record_known {
        eprintln!(
            "the pins under {} stay: without a record, egress may still enforce on other interfaces with them (`egress detach --all` removes everything)",
            pins.root().display()
        );
        return Ok(());
    }
    drop(dp);
    if pins.root().exists() {
        egress_user::sockets::detach(pins)?;
        for name in egress_common::maps::names::ALL {
            let _ = std::fs::remove_file(pins.map(name));
        }
        let _ = std::fs::remove_dir(pins.maps_dir());
        // Layout 0's maps (pins not migrated), the layout record and its guard (layout 0's
        // `CONFIG` name), and what a stopped write of either left.
        for name in egress_user::layout::v0::defs().keys() {
            let _ = std::fs::remove_file(pins.flat_map(name));
        }
        for path in [pins.layout_record(), pins.guard()] {
            let _ = std::fs::remove_file(PinDir::staging(&path));
            let _ = std::fs::remove_file(path);
        }
        for hook in egress_user::pins::Hook::ALL {
            let _ = std::fs::remove_file(pins.program(hook));
        }
        std::fs::remove_dir(pins.root()).with_context(|| {
            format!(
                "cannot remove {} (pins of another tool there?)",
                pins.root().display()
            )
        })?;
        eprintln!("removed {}", pins.root().display());
    }
    Ok(())
}
