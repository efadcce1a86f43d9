use super::*;

fn ok(text: &str) -> Policy {
    parse(text, Path::new("p.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    parse(text, Path::new("p.yaml"))
        .expect_err("policy should be rejected")
        .to_string()
}

#[test]
fn the_documented_example_parses_and_normalizes() {
    let p = ok(r#"
mode: enforce
ports: [443]
resolvers: [10.0.0.2]
allow:
  names: [cgr.dev, "*.r2.cloudflarestorage.com", "CGR.dev."]
  cidrs: [10.96.0.0/12, "2001:db8::/32", 192.0.2.7]
  presets: []
dns:
  min_ttl: 5s
  grace: 30s
"#);
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.ports, vec![443]);
    assert_eq!(p.resolvers, Some(vec!["10.0.0.2".parse().unwrap()]));
    assert_eq!(
        p.allow.names,
        vec![
            NamePattern::Exact("cgr.dev".into()),
            NamePattern::Wildcard("r2.cloudflarestorage.com".into())
        ]
    );
    assert_eq!(p.allow.cidrs.len(), 3);
    assert!(p.allow.cidrs.contains(&"192.0.2.7/32".parse().unwrap()));
    assert_eq!(p.dns.min_ttl, Duration::from_secs(5));
    assert_eq!(p.dns.grace, Duration::from_secs(30));
}

#[test]
fn defaults_apply_to_an_empty_policy() {
    let p = ok("{}");
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.ports, vec![443]);
    assert_eq!(p.resolvers, None);
    assert!(p.allow.names.is_empty() && p.allow.cidrs.is_empty());
    assert_eq!(p.dns, Dns::default());
}

#[test]
fn errors_name_file_line_and_column() {
    let e = err("mode: enforce\nallow:\n  cidrs:\n    - 10.0.0.0/8\n    - 10.1.2.3/8\n");
    assert!(e.starts_with("p.yaml:5:"), "{e}");
    assert!(
        e.contains("host bits are set; did you mean 10.0.0.0/8?"),
        "{e}"
    );
}

#[test]
fn unknown_keys_are_errors() {
    let e = err("mode: enforce\nallw:\n  names: [a.com]\n");
    assert!(e.starts_with("p.yaml:2:"), "{e}");
    assert!(e.contains("allw"), "{e}");
    let e = err("dns:\n  min_tll: 5s\n");
    assert!(e.contains("min_tll"), "{e}");
}

#[test]
fn invalid_values_are_errors() {
    for (text, needle) in [
        ("mode: block\n", "block"),
        ("ports: []\n", "empty"),
        ("ports: [0]\n", "port 0"),
        ("ports: [443, 443]\n", "twice"),
        ("ports: [70000]\n", "70000"),
        (
            "ports: [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]\n",
            "at most 16",
        ),
        ("allow:\n  names: [\"a.*.com\"]\n", "leftmost"),
        ("allow:\n  names: [\"*\"]\n", "leftmost"),
        ("allow:\n  names: [\"exa mple.com\"]\n", "letters, digits"),
        ("allow:\n  names: [\"a..com\"]\n", "empty label"),
        ("allow:\n  names: [\"-a.com\"]\n", "starts or ends"),
        ("allow:\n  cidrs: [\"10.0.0.0/33\"]\n", "invalid CIDR"),
        ("allow:\n  cidrs: [\"not-an-ip\"]\n", "invalid CIDR"),
        (
            "allow:\n  presets: [talso]\n",
            "unknown preset \"talso\": the presets are",
        ),
        ("resolvers: [dns.google]\n", "dns.google"),
        ("dns:\n  min_ttl: 5 parsecs\n", "invalid duration"),
        ("dns:\n  min_ttl: 2h\n", "out of range"),
        ("dns:\n  grace: 2d\n", "out of range"),
    ] {
        let e = err(text);
        assert!(e.contains(needle), "{text:?} gave {e:?}");
        assert!(e.starts_with("p.yaml:"), "{text:?} gave {e:?}");
    }
}

#[test]
fn more_static_cidrs_than_the_maps_hold_for_one_policy_are_rejected() {
    use egress_common::maps::STATIC_CAPACITY;
    let cidrs = |n: u32, v6: bool| {
        (0..n)
            .map(|i| {
                if v6 {
                    format!("\"2001:db8::{:x}:{:x}/128\"", i >> 16, i & 0xffff)
                } else {
                    std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    ok(&format!(
        "allow:\n  cidrs: [{}, {}]\n",
        cidrs(STATIC_CAPACITY, false),
        cidrs(STATIC_CAPACITY, true)
    ));
    for v6 in [false, true] {
        let e = err(&format!(
            "allow:\n  cidrs: [{}]\n",
            cidrs(STATIC_CAPACITY + 1, v6)
        ));
        assert!(e.starts_with("p.yaml:2:"), "{e}");
        assert!(
            e.contains(&format!("at most {STATIC_CAPACITY} per family")),
            "{e}"
        );
    }
}

#[test]
fn long_names_and_labels_are_rejected() {
    let label = "a".repeat(64);
    assert!(format!("{label}.com").parse::<NamePattern>().is_err());
    let long = ["abcdefghi"; 26].join(".");
    assert!(long.len() > 253);
    assert!(long.parse::<NamePattern>().is_err());
}

#[test]
fn names_deeper_than_the_kernel_matches_are_rejected_where_they_stand() {
    use egress_common::MAX_LABELS;
    let deep = |n: usize| vec!["a"; n].join(".");
    // As deep as the kernel matches: accepted; a wildcard leaves room for one more label.
    ok(&format!("allow:\n  names: [{}]\n", deep(MAX_LABELS)));
    ok(&format!(
        "allow:\n  names: [\"*.{}\"]\n",
        deep(MAX_LABELS - 1)
    ));
    let e = err(&format!(
        "allow:\n  names:\n    - cgr.dev\n    - {}\n",
        deep(MAX_LABELS + 1)
    ));
    assert!(e.starts_with("p.yaml:4:7:"), "{e}");
    assert!(e.contains("17 labels"), "{e}");
    let e = err(&format!("allow:\n  names: [\"*.{}\"]\n", deep(MAX_LABELS)));
    assert!(e.starts_with("p.yaml:2:"), "{e}");
    assert!(e.contains("a wildcard's suffix at most one less"), "{e}");
}

#[test]
fn wildcards_match_any_depth_below_but_not_the_apex() {
    let w: NamePattern = "*.azurefd.net".parse().unwrap();
    assert!(w.matches("a.azurefd.net"));
    assert!(w.matches("a.b.azurefd.net"));
    assert!(w.matches("A.AzureFD.net."));
    assert!(!w.matches("azurefd.net"));
    assert!(!w.matches("evilazurefd.net"));
    assert!(!w.matches(".azurefd.net"));
    let e: NamePattern = "cgr.dev".parse().unwrap();
    assert!(e.matches("CGR.DEV."));
    assert!(!e.matches("x.cgr.dev"));
}

#[test]
fn a_missing_file_names_its_path() {
    let e = load(Path::new("/nonexistent/policy.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/policy.yaml"), "{e}");
}

#[test]
fn presets_expand_into_the_allowed_names_and_stay_listed() {
    let p = parse(
        "allow:\n  names: [example.com, ghcr.io]\n  presets: [talos, chainguard]\n",
        "p.yaml".as_ref(),
    )
    .unwrap();
    assert_eq!(p.allow.presets, ["talos", "chainguard"]);
    for want in [
        "example.com",
        "ghcr.io",
        "registry.k8s.io",
        "*.pkg.dev",
        "cgr.dev",
    ] {
        assert!(
            p.allow.names.contains(&want.parse().unwrap()),
            "{want} missing from {:?}",
            p.allow.names
        );
    }
    // ghcr.io is in the policy and in both presets: once.
    let ghcr: NamePattern = "ghcr.io".parse().unwrap();
    assert_eq!(p.allow.names.iter().filter(|n| **n == ghcr).count(), 1);
}

#[test]
fn an_unknown_preset_is_located() {
    let e = parse(
        "allow:\n  presets:\n    - talos\n    - nope\n",
        "p.yaml".as_ref(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("p.yaml:4:"), "{e}");
    assert!(
        e.contains("chainguard, ibm-container-registry, talos"),
        "{e}"
    );
}

#[test]
fn an_empty_policy_is_an_error_not_a_deny_all() {
    for text in ["", "\n\n", "# only a comment\n"] {
        let e = parse(text, "p.yaml".as_ref()).unwrap_err().to_string();
        assert!(e.starts_with("p.yaml:1:1: the policy is empty"), "{e}");
    }
    assert!(parse("allow: {}\n", "p.yaml".as_ref()).is_ok());
}

#[test]
fn more_resolvers_than_the_kernel_map_holds_are_rejected_where_they_stand() {
    let list: Vec<String> = (1..=65).map(|i| format!("192.0.2.{i}")).collect();
    let e = err(&format!("mode: audit\nresolvers: [{}]\n", list.join(", ")));
    assert!(e.starts_with("p.yaml:2:"), "{e}");
    assert!(e.contains("at most 64"), "{e}");
    let ok64 = ok(&format!("resolvers: [{}]\n", list[..64].join(", ")));
    assert_eq!(ok64.resolvers.map(|r| r.len()), Some(64));
}

#[test]
fn durations_below_a_second_are_rejected_where_they_stand() {
    let e = err("allow:\n  names: [cgr.dev]\ndns:\n  min_ttl: 500ms\n");
    assert!(e.starts_with("p.yaml:4:"), "{e}");
    assert!(e.contains("whole seconds"), "{e}");
    let e = err("allow:\n  names: [cgr.dev]\ndns:\n  grace: 1500ms\n");
    assert!(e.starts_with("p.yaml:4:"), "{e}");
    let p = ok("allow:\n  names: [cgr.dev]\ndns:\n  min_ttl: 2000ms\n");
    assert_eq!(p.dns.min_ttl, Duration::from_secs(2));
}

#[test]
fn the_tls_section_defaults_to_enforce_deny_and_443_when_enforced() {
    let p = ok("allow: {}\n");
    assert_eq!(
        p.tls,
        Tls {
            sni: Sni::Enforce,
            quic: Quic::Deny,
            ports: vec![443]
        }
    );
    assert!(
        ok("ports: [8443]\n").tls.ports.is_empty(),
        "443 not enforced"
    );
    let p = ok("ports: [443, 8443]\ntls:\n  sni: audit\n  quic: address\n  ports: [8443, 443]\n");
    assert_eq!((p.tls.sni, p.tls.quic), (Sni::Audit, Quic::Address));
    assert_eq!(p.tls.ports, vec![443, 8443]);
    assert!(
        ok("tls:\n  ports: []\n").tls.ports.is_empty(),
        "an empty list judges no port"
    );
    assert_eq!(ok("tls:\n  sni: off\n").tls.sni, Sni::Off);
}

#[test]
fn tls_errors_name_where_they_stand() {
    let e = err("ports: [443]\nallow: {}\ntls:\n  ports: [443, 8443]\n");
    assert!(
        e.starts_with("p.yaml:3:1: tls.ports lists 8443, which is not an enforced port"),
        "{e}"
    );
    let e = err("tls:\n  quic: verify\n");
    assert!(
        e.starts_with("p.yaml:2:") && e.contains("not implemented"),
        "{e}"
    );
    let e = err("tls:\n  sni: strict\n");
    assert!(e.starts_with("p.yaml:2:"), "{e}");
    let e = err("tls:\n  ports: [443, 443]\n");
    assert!(e.contains("listed twice"), "{e}");
    let e = err("tls:\n  snii: off\n");
    assert!(e.contains("snii"), "{e}");
}
