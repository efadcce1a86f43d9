use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Compiles `egress-ebpf` for the BPF target with the nightly toolchain; the object is embedded
/// by `src/ebpf.rs`. `AYA_BUILD_SKIP=1` skips it for host-only checks.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "egress-ebpf")
        .ok_or_else(|| anyhow!("egress-ebpf package not found"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
        .as_str();
    // aya-build only watches the eBPF crate; the shared crate is compiled into the object too.
    println!("cargo:rerun-if-changed={root_dir}/../egress-common");
    let ebpf_package = Package {
        name: name.as_str(),
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::default())
}
