//! Policy narrowing takes effect at once, with real traffic: a name removed from the policy
//! (by a reload or at a restart) stops new connections to the addresses only it justified,
//! while an address still answered for a name that stays keeps working; established
//! connections are kept or cut as `revoked_connections:` says.

use std::time::Duration;

use egress_tests::{
    Agent, TestPins,
    live::{RESOLVER_V4, WEB_CGR, WEB_R2, World, WorldOptions, tls_exchange, tls_open},
    metric,
};

const MAX: Duration = Duration::from_secs(3);
/// Long enough for a SYN and its first retransmission (1 s): a connect that fails within it
/// was dropped, not slow.
const DENIED_WAIT: Duration = Duration::from_millis(2500);

fn policy(names: &str, revoked: &str) -> String {
    format!(
        "mode: enforce\nports: [443]\nresolvers: [{RESOLVER_V4}]\nrevoked_connections: {revoked}\n\
         allow:\n  names: [{names}]\ndns:\n  min_ttl: 5s\n  grace: 30s\n"
    )
}

fn start(policy: &str) -> (World, TestPins, Agent) {
    // A TTL far longer than the test: only revocation can take an address away.
    let world = World::new(WorldOptions {
        ttl: 3600,
        ..WorldOptions::default()
    })
    .expect("world");
    let pins = TestPins::new();
    let agent = Agent::start(&world.topo, &pins, policy, &[]).expect("agent");
    (world, pins, agent)
}

#[test]
fn a_reload_revokes_a_removed_name_at_once_and_keeps_an_address_a_remaining_name_shares() {
    let (w, _p, agent) = start(&policy(
        "cgr.dev, mirror.test, \"*.r2.cloudflarestorage.com\"",
        "keep",
    ));
    for url in [
        "https://cgr.dev/",
        "https://mirror.test/",
        "https://bucket.r2.cloudflarestorage.com/",
    ] {
        assert_eq!(
            w.curl(url, &[], MAX),
            Some(200),
            "{url}: {}",
            agent.log_text()
        );
    }
    let mut established = tls_open(&w.topo, WEB_R2, "bucket.r2.cloudflarestorage.com")
        .expect("connect while allowed");

    // cgr.dev and the wildcard leave; mirror.test (the same address as cgr.dev) stays.
    agent.set_policy(&w.topo.client, &policy("mirror.test", "keep"));
    assert!(
        w.topo.connect(WEB_R2, 443, DENIED_WAIT).is_err(),
        "a new connection reached an address only a removed wildcard allowed"
    );
    assert!(
        w.topo.connect(WEB_CGR, 443, MAX).is_ok(),
        "an address a remaining name shares was revoked"
    );
    assert!(metric(&w.topo.client, "egress_learned_revoked_total") >= 1.0);
    tls_exchange(&mut established)
        .expect("revoked_connections: keep cut an established connection");
    // A removed wildcard's answers teach nothing any more.
    assert_eq!(
        w.curl("https://other.r2.cloudflarestorage.com/", &[], DENIED_WAIT),
        None
    );
}

#[test]
fn revoked_connections_cut_stops_established_connections_to_revoked_addresses() {
    let (w, _p, agent) = start(&policy("cgr.dev, \"*.r2.cloudflarestorage.com\"", "cut"));
    assert_eq!(
        w.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    assert_eq!(
        w.curl("https://bucket.r2.cloudflarestorage.com/", &[], MAX),
        Some(200)
    );
    let mut revoked = tls_open(&w.topo, WEB_R2, "bucket.r2.cloudflarestorage.com").unwrap();
    let mut kept = tls_open(&w.topo, WEB_CGR, "cgr.dev").unwrap();
    agent.set_policy(&w.topo.client, &policy("cgr.dev", "cut"));
    assert!(
        tls_exchange(&mut revoked).is_err(),
        "an established connection to a revoked address kept flowing under `cut`"
    );
    tls_exchange(&mut kept).expect("a connection to a still-allowed address was cut");
}

#[test]
fn a_restart_with_a_narrower_policy_revokes_at_start() {
    let (w, _p, mut agent) = start(&policy("cgr.dev, \"*.r2.cloudflarestorage.com\"", "keep"));
    assert_eq!(
        w.curl("https://bucket.r2.cloudflarestorage.com/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    // The agent stops; the pinned program keeps enforcing with what it learned.
    agent.kill9();
    assert!(w.topo.connect(WEB_R2, 443, MAX).is_ok());
    agent.write_policy(&policy("cgr.dev", "keep"));
    agent.spawn(&[]).unwrap();
    agent.wait_ready(&w.topo.client).unwrap();
    assert!(
        w.topo.connect(WEB_R2, 443, DENIED_WAIT).is_err(),
        "a restart kept an address only a removed rule allowed"
    );
}

/// The kernel records the rules that matched when it learned; a rule added since may cover the
/// name too. Replacing an exact name by a wildcard that covers it keeps its addresses: the
/// name that last answered with each address is matched against the rules in force before
/// anything is revoked.
#[test]
fn an_exact_name_replaced_by_a_wildcard_that_covers_it_keeps_its_addresses() {
    let (w, _p, agent) = start(&policy("cgr.dev", "keep"));
    assert_eq!(
        w.curl("https://cgr.dev/", &[], MAX),
        Some(200),
        "{}",
        agent.log_text()
    );
    agent.set_policy(&w.topo.client, &policy("\"*.dev\"", "keep"));
    assert!(
        w.topo.connect(WEB_CGR, 443, DENIED_WAIT).is_ok(),
        "cgr.dev's address was revoked although *.dev allows cgr.dev: {}",
        agent.log_text()
    );
    // And a later narrowing that removes it does revoke it.
    agent.set_policy(&w.topo.client, &policy("packages.wolfi.dev", "keep"));
    assert!(
        w.topo.connect(WEB_CGR, 443, DENIED_WAIT).is_err(),
        "no remaining rule allows cgr.dev"
    );
}
