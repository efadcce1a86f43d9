//! The Kubernetes manifests in deploy/kubernetes and deploy/kubernetes-uninstall: every one
//! validates against the Kubernetes schemas (kubernetes-validate, strict: unknown fields are
//! errors), each kustomization lists every manifest of its directory and rewrites the image of
//! every container, the DaemonSets run only where an image is built, and the validator does
//! catch a broken one.

use std::{path::PathBuf, process::Command};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The agent's kustomization, then the one that removes egress from every node.
fn dirs() -> [PathBuf; 2] {
    [dir(), dir().with_file_name("kubernetes-uninstall")]
}

fn yaml(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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

fn manifests(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
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
    let all: Vec<PathBuf> = dirs().iter().flat_map(|d| manifests(d)).collect();
    assert!(all.len() >= 6, "{all:?}");
    for m in all {
        let (ok, text) = validate(&m);
        assert!(ok, "{}: {text}", m.display());
        assert!(text.contains("passed"), "{}: {text}", m.display());
    }
}

#[test]
fn the_kustomization_lists_every_manifest() {
    for d in dirs() {
        let k = yaml(&d.join("kustomization.yaml"));
        let listed: Vec<&str> = k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        for m in manifests(&d) {
            let name = m.file_name().unwrap().to_str().unwrap();
            assert!(
                listed.contains(&name),
                "{name} missing from {}/kustomization.yaml",
                d.display()
            );
        }
    }
}

/// Nothing publishes an image: each kustomization must rewrite the image of every container to
/// the operator's registry (an `images:` entry whose `name` is the container's image), both
/// kustomizations must name the same image (the uninstall runs what the agents ran), and the
/// DaemonSets must select the architecture that is built (`cargo xtask image`: amd64).
#[test]
fn every_container_image_is_rewritten_by_the_kustomization_and_runs_on_amd64_only() {
    let mut targets = Vec::new();
    for d in dirs() {
        let k = yaml(&d.join("kustomization.yaml"));
        let images = k["images"].as_array().expect("an images: entry");
        let mut daemonsets = 0;
        for m in manifests(&d) {
            let doc = yaml(&m);
            if doc["kind"] != "DaemonSet" {
                continue;
            }
            daemonsets += 1;
            let spec = &doc["spec"]["template"]["spec"];
            assert_eq!(
                spec["nodeSelector"]["kubernetes.io/arch"],
                "amd64",
                "{}: no amd64 nodeSelector",
                m.display()
            );
            let containers = ["initContainers", "containers"]
                .iter()
                .filter_map(|c| spec[*c].as_array())
                .flatten();
            for c in containers {
                let image = c["image"].as_str().expect("a container image");
                let entry = images
                    .iter()
                    .find(|i| i["name"] == image)
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: image {image} is not rewritten by kustomization.yaml",
                            m.display()
                        )
                    });
                let target = format!(
                    "{}:{}",
                    entry["newName"].as_str().expect("newName"),
                    entry["newTag"].as_str().expect("newTag (quoted)")
                );
                targets.push(target);
            }
        }
        assert_eq!(daemonsets, 1, "{}", d.display());
    }
    targets.dedup();
    assert_eq!(
        targets.len(),
        1,
        "the kustomizations name different images: {targets:?}"
    );
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
fn the_uninstall_daemonset_runs_detach_all_on_the_agents_pin_dir() {
    let agent = std::fs::read_to_string(dir().join("daemonset.yaml")).unwrap();
    let pin_dir = agent
        .lines()
        .find_map(|l| l.trim().strip_prefix("- --pin-dir="))
        .expect("the agent's DaemonSet passes --pin-dir=DIR");
    let ds = yaml(&dirs()[1].join("daemonset.yaml"));
    let args = &ds["spec"]["template"]["spec"]["containers"][0]["args"];
    assert_eq!(
        *args,
        serde_json::json!(["detach", "--all", format!("--pin-dir={pin_dir}")])
    );
    // The arguments are the binary's: `egress detach --all` on a directory with nothing pinned
    // succeeds and removes nothing.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none");
    let out = egress_tests::egress(
        None,
        &[
            "detach".as_ref(),
            "--all".as_ref(),
            format!("--pin-dir={}", missing.display()).as_ref(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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
