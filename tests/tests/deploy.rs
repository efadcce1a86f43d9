//! The Kubernetes manifests in deploy/kubernetes: every one validates against the Kubernetes
//! schemas (kubernetes-validate, strict: unknown fields are errors), the kustomization lists
//! every manifest, and the validator does catch a broken one.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn validate(path: &std::path::Path) -> (bool, String) {
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(path)
        .output()
        .expect("kubernetes-validate (cargo xtask setup installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_manifest_validates() {
    let all = manifests();
    assert!(all.len() >= 4, "{all:?}");
    for m in all {
        let (ok, text) = validate(&m);
        assert!(ok, "{}: {text}", m.display());
        assert!(text.contains("passed"), "{}: {text}", m.display());
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    let k = std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap();
    for m in manifests() {
        let name = m.file_name().unwrap().to_str().unwrap();
        assert!(
            k.contains(&format!("- {name}")),
            "{name} missing from kustomization.yaml"
        );
    }
}

#[test]
fn a_misspelled_field_fails_validation() {
    let ds = std::fs::read_to_string(dir().join("daemonset.yaml")).unwrap();
    assert!(ds.contains("readOnlyRootFilesystem"));
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("daemonset.yaml");
    std::fs::write(
        &bad,
        ds.replace("readOnlyRootFilesystem", "readOnlyRootFilesytem"),
    )
    .unwrap();
    let (ok, text) = validate(&bad);
    assert!(!ok, "a misspelled field passed: {text}");
    assert!(
        text.contains("readOnlyRootFilesytem"),
        "the error does not name the misspelled field: {text}"
    );
}

#[test]
fn the_daemonset_runs_the_agent_with_the_measured_capabilities_only() {
    // tests/tests/operate.rs proves these three are needed and enough.
    let ds = std::fs::read_to_string(dir().join("daemonset.yaml")).unwrap();
    assert!(ds.contains("drop: [\"ALL\"]"));
    assert!(ds.contains("add: [\"BPF\", \"NET_ADMIN\", \"PERFMON\"]"));
    assert!(ds.contains("privileged: false"));
    // Learning at the sockets of the host's root cgroup (docs/kubernetes.md).
    assert!(ds.contains("--dns-cgroup=/host/sys/fs/cgroup") && ds.contains("path: /sys/fs/cgroup"));
    assert!(ds.contains("dnsPolicy: ClusterFirstWithHostNet"));
    // The policy directory (not a subPath) so ConfigMap updates reach the agent.
    assert!(ds.contains("mountPath: /etc/egress") && !ds.contains("subPath:"));
}
