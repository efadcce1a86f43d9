use which::which;

/// Rebuild when bpf-linker changes (it is not a cargo dependency, so cargo cannot track it).
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker is not on PATH; run `cargo xtask setup` to build and install it");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
