//! Built-in presets: the hostnames vendors publish as "network requirements", transcribed from
//! their documents (`egress-user/presets/*.yaml`, embedded at build time) with source, edition
//! and notes. A policy names them in `allow.presets`; `egress presets [NAME]` prints them.

use std::{fmt::Write as _, sync::OnceLock};

use serde::Deserialize;

use crate::name::NamePattern;

/// The preset files, embedded.
const FILES: &[(&str, &str)] = &[
    (
        "chainguard.yaml",
        include_str!("../presets/chainguard.yaml"),
    ),
    (
        "ibm-container-registry.yaml",
        include_str!("../presets/ibm-container-registry.yaml"),
    ),
    ("talos.yaml", include_str!("../presets/talos.yaml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub description: String,
    pub sources: Vec<Source>,
    #[serde(default)]
    pub notes: Vec<String>,
    pub names: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub title: String,
    pub vendor: String,
    pub edition: String,
    /// The document in the project's seed collection it was transcribed from.
    pub file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    #[serde(default)]
    pub note: Option<String>,
}

impl Preset {
    /// The preset's names as policy patterns (validated when the presets load).
    pub fn patterns(&self) -> Vec<NamePattern> {
        self.names
            .iter()
            .map(|e| e.name.parse().expect("validated in all()"))
            .collect()
    }

    /// The preset as a policy fragment, with its sources and notes as comments.
    pub fn fragment(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# preset {}: {}", self.name, self.description);
        for s in &self.sources {
            let _ = writeln!(o, "# source: {} ({}), {}", s.title, s.vendor, s.edition);
        }
        for n in &self.notes {
            let _ = writeln!(o, "# note: {n}");
        }
        let _ = writeln!(
            o,
            "# In a policy, `allow: {{presets: [{}]}}` uses it as is.\nallow:\n  names:",
            self.name
        );
        for e in &self.names {
            match &e.note {
                Some(note) => {
                    let _ = writeln!(o, "    - \"{}\"  # {note}", e.name);
                }
                None => {
                    let _ = writeln!(o, "    - \"{}\"", e.name);
                }
            }
        }
        o
    }
}

/// Every preset, parsed and validated once. A bad embedded file is a build defect, caught by
/// the tests, so it panics with the file and the problem.
pub fn all() -> &'static [Preset] {
    static ALL: OnceLock<Vec<Preset>> = OnceLock::new();
    ALL.get_or_init(|| {
        FILES
            .iter()
            .map(|(file, text)| {
                let p: Preset =
                    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("preset {file}: {e}"));
                for e in &p.names {
                    if let Err(err) = e.name.parse::<NamePattern>() {
                        panic!("preset {file}: {err}");
                    }
                }
                p
            })
            .collect()
    })
}

pub fn get(name: &str) -> Option<&'static Preset> {
    all().iter().find(|p| p.name == name)
}

/// The preset names, for messages.
pub fn known() -> String {
    all()
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `egress presets`: one line per preset.
pub fn list() -> String {
    let mut o = String::new();
    for p in all() {
        let editions: Vec<&str> = p.sources.iter().map(|s| s.edition.as_str()).collect();
        let _ = writeln!(
            o,
            "{:<24} {:>3} names  {} [{}: {}]",
            p.name,
            p.names.len(),
            p.description,
            p.sources[0].vendor,
            editions.join("; ")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every hostname in the committed facts extracted from a document is matched by its
    /// preset (a wildcard in the document must be in the preset as that wildcard).
    fn check(hosts_file: &str, preset: &str) {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("presets/sources")
                .join(hosts_file),
        )
        .unwrap();
        let p = get(preset).unwrap();
        let patterns = p.patterns();
        let mut n = 0;
        for host in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            n += 1;
            let covered = if host.starts_with("*.") {
                patterns.contains(&host.parse().unwrap())
            } else {
                patterns.iter().any(|pat| pat.matches(host))
                    && p.names.iter().any(|e| e.name == host)
            };
            assert!(
                covered,
                "{host} from {hosts_file} is not in preset {preset}"
            );
        }
        assert!(n > 0);
    }

    #[test]
    fn every_hostname_of_every_document_is_in_its_preset() {
        check("000_07132643a2ccd56e.hosts", "chainguard");
        check("001_facd1bddac7fc46d.hosts", "chainguard");
        check("003_a3ead7de906f7394.hosts", "ibm-container-registry");
        check("004_3492d1be8b007354.hosts", "talos");
    }

    /// The committed extraction is complete: re-extracted from the vendors' documents, which
    /// every checkout has beside it (`../shared/seeds`, or `$EGRESS_SEEDS`).
    #[test]
    fn the_committed_extraction_matches_the_documents() {
        let dir = std::env::var_os("EGRESS_SEEDS").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seeds"),
            Into::into,
        );
        assert!(
            dir.is_dir(),
            "the vendors' documents are not at {} (the checkout's ../shared/seeds; or set EGRESS_SEEDS)",
            dir.display()
        );
        // Mentioned in the documents but not requirements: a typo the preset's note records,
        // links, and a host named only as "may also be needed".
        const NOT_REQUIREMENTS: &[&str] = &[
            "*.rc.cloudflarestorage.com",
            "www.chainguard.dev",
            "nordlayer.com",
            "docker.io",
            "github.com",
            "*.ibm-zh.com",
            // "Kubernetes Registry (k8s.io)": a heading; the host is registry.k8s.io.
            "k8s.io",
        ];
        for doc in [
            "000_07132643a2ccd56e",
            "001_facd1bddac7fc46d",
            "003_a3ead7de906f7394",
            "004_3492d1be8b007354",
        ] {
            let text = std::fs::read_to_string(dir.join(format!("{doc}.txt"))).unwrap();
            let committed = std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("presets/sources")
                    .join(format!("{doc}.hosts")),
            )
            .unwrap();
            for host in hostnames(&text) {
                if NOT_REQUIREMENTS.contains(&host.as_str()) {
                    continue;
                }
                assert!(
                    committed.lines().any(|l| l == host),
                    "{host} appears in {doc}.txt but not in presets/sources/{doc}.hosts"
                );
            }
        }
    }

    /// Hostname-like tokens (optionally `*.`-prefixed) that end in a suffix of the Public
    /// Suffix List; tokens inside URLs are links, not requirements.
    fn hostnames(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text.split(|c: char| c.is_whitespace() || "`|()[]<>,\"'".contains(c)) {
            if word.contains("://") || word.starts_with('/') {
                continue;
            }
            let w = word.trim_end_matches(['.', ':', ';']);
            let labels: Vec<&str> = w.trim_start_matches("*.").split('.').collect();
            let lower = w.to_ascii_lowercase();
            if labels.len() >= 2
                && psl::suffix(lower.as_bytes()).is_some_and(|s| s.is_known())
                && labels.iter().all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
            {
                out.push(w.to_ascii_lowercase());
            }
        }
        out
    }

    #[test]
    fn every_preset_prints_as_a_valid_policy_with_its_names() {
        for p in all() {
            let parsed = crate::policy::parse(&p.fragment(), "preset.yaml".as_ref())
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", p.name, p.fragment()));
            for pat in p.patterns() {
                assert!(parsed.allow.names.contains(&pat), "{pat} of {}", p.name);
            }
        }
        assert_eq!(all().len(), 3);
    }
}
