//! The policy in force, as the programs read it: the configuration of the generation in
//! [`ACTIVE`], and lookups in the other policy maps under that generation (see
//! `egress_common::maps::generation`). Every program reads the policy through this module, so a
//! reload that is half written (or whose agent was killed) is never seen: its entries belong to
//! the other generation until the one write that switches.

use aya_ebpf::maps::{Array, lpm_trie::Key};
use egress_common::maps::{
    Config, PORT_WORDS, Rule, WildKey, generation, port_bit, static_v4, static_v6,
};

use crate::maps::{
    ACTIVE, CONFIG, NAMES_EXACT, NAMES_WILD, PORTS, RESOLVERS, STATIC_V4, STATIC_V6, TLS_PORTS,
};

/// The configuration in force. `None` cannot happen (the array has both slots) but must be
/// handled; callers fail as they do on an unconfigured datapath.
#[inline(always)]
pub(crate) fn config() -> Option<&'static Config> {
    CONFIG.get(active())
}

/// Whether `port` is enforced under `cfg`'s policy.
#[inline(always)]
pub(crate) fn port_enforced(cfg: &Config, port: u16) -> bool {
    in_port_set(&PORTS, cfg, port)
}

/// Whether `port` is a TLS port (`tls.ports`) under `cfg`'s policy.
#[inline(always)]
pub(crate) fn tls_port(cfg: &Config, port: u16) -> bool {
    in_port_set(&TLS_PORTS, cfg, port)
}

/// Whether `port` is in the port set `map` (bit arrays, one per generation) of `cfg`'s policy.
#[inline(always)]
fn in_port_set(map: &Array<u32>, cfg: &Config, port: u16) -> bool {
    let (word, bit) = port_bit(port);
    matches!(map.get((cfg.generation & 1) * PORT_WORDS + word), Some(w) if w & bit != 0)
}

/// Whether `hash` is a name of `cfg`'s policy: an exact name of the generation in force that
/// never expires. CNAME targets (they expire) do not count: a server name is the name the
/// application asked for.
#[inline(always)]
pub(crate) fn policy_name(cfg: &Config, hash: u64) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    matches!(unsafe { NAMES_EXACT.get(&hash) }, Some(v) if v.permanent_in(cfg.generation))
}

/// Whether `addr` (IPv4-mapped for IPv4) is a trusted resolver under `cfg`'s policy.
#[inline(always)]
pub(crate) fn resolver(cfg: &Config, addr: &[u8; 16]) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    matches!(unsafe { RESOLVERS.get(addr) }, Some(g) if g & generation::bit(cfg.generation) != 0)
}

/// The generation in force (0 if `ACTIVE` could not be read, which cannot happen: the array
/// has the slot).
#[inline(always)]
pub(crate) fn active() -> u32 {
    ACTIVE.get(0).map_or(0, |g| *g & 1)
}

/// The rule of `hash`'s exact-name entry if it matches under generation `g` at `now`,
/// [`Rule::NONE`] if not.
#[inline(always)]
pub(crate) fn exact_rule(hash: u64, g: u32, now: u64) -> Rule {
    // SAFETY: a read-only lookup of a plain value.
    match unsafe { NAMES_EXACT.get(&hash) } {
        Some(v) if v.matches(g, now) => v.rule,
        _ => Rule::NONE,
    }
}

/// Whether `hash` is an allowed wildcard suffix under `cfg`'s policy.
#[inline(always)]
pub(crate) fn wild_name(cfg: &Config, hash: u64) -> bool {
    // SAFETY: a read-only lookup of a plain value.
    unsafe { NAMES_WILD.get(&WildKey::new(hash, cfg.generation)) }.is_some()
}

/// Whether an IPv4 address is in a static CIDR of `cfg`'s policy.
#[inline(always)]
pub(crate) fn static_v4_allows(cfg: &Config, a: [u8; 4]) -> bool {
    STATIC_V4
        .get(&Key::new(8 + 32, static_v4(cfg.generation, a)))
        .is_some()
}

/// Whether an IPv6 address is in a static CIDR of `cfg`'s policy.
#[inline(always)]
pub(crate) fn static_v6_allows(cfg: &Config, a: [u8; 16]) -> bool {
    STATIC_V6
        .get(&Key::new(8 + 128, static_v6(cfg.generation, a)))
        .is_some()
}
