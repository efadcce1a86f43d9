//! Layout 0: every egress before layout versions (main up to `7606f0e`), and what becomes of
//! each of its maps in layout 1.
//!
//! The definitions are committed in `layouts/v0.txt`; the migration tests check them against
//! the pins of a real layout-0 build (`cargo xtask fixture`).

use std::collections::BTreeMap;

use egress_common::maps::names;

use crate::ebpf::MapDef;

/// Layout 0's map definitions.
pub fn defs() -> BTreeMap<String, MapDef> {
    super::defs(0)
}

/// What layout 1 does with one of layout 0's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The same kernel map, pinned again under `v1/` before the new object is loaded: both
    /// layouts' programs read and write it. Required for every map that carries state from one
    /// hook to another (written by one program, read by another), because hooks are swapped
    /// one at a time and an answer learned by the old `ingress` must be seen by the new
    /// `egress` a microsecond later. The definitions must be equal (checked).
    Share,
    /// Created empty in `v1/`: the policy maps (written again from the policy file with the
    /// carried name-hash key), per-CPU scratch and budgets.
    Fresh,
    /// `FLOWS`, `FLOWS_UDP`: the value grew from 8 bytes (`last_seen_ns`) to 16 (`rule`
    /// after it; 0 = admitted by address). Copied before the swap and again after it.
    Flows,
    /// `NAMES_EXACT`: fresh (policy names are written by the apply) with the CNAME targets
    /// learned so far copied, before the swap and again after it.
    CnameTargets,
    /// `COUNTERS`: grew from 35 to 48 slots, the first 35 unchanged; added into the new map
    /// after the swap (what the old programs counted up to it is kept).
    Counters,
}

/// The rule for layout 0's map `name`.
pub fn rule(name: &str) -> Option<Rule> {
    Some(match name {
        names::LEARNED_V4
        | names::LEARNED_V6
        | names::LEARNED_BY
        | names::DNS_PENDING
        | names::SOCK_PENDING
        | names::DNS_TCP
        | names::DNS_CLIENTS
        | names::ADMITTED
        | names::REVOKED
        | names::EVENTS
        | names::DNS_EVENTS
        | names::ANSWERS
        | names::DENIED
        | names::ATTACHED => Rule::Share,
        names::ACTIVE
        | names::CONFIG
        | names::PORTS
        | names::STATIC_V4
        | names::STATIC_V6
        | names::RESOLVERS
        | names::NAMES_WILD
        | names::EVENT_RATE
        | names::DNS_SCRATCH => Rule::Fresh,
        names::FLOWS | names::FLOWS_UDP => Rule::Flows,
        names::NAMES_EXACT => Rule::CnameTargets,
        names::COUNTERS => Rule::Counters,
        _ => return None,
    })
}

/// Layout 0's flow value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub last_seen_ns: u64,
}

// SAFETY: plain old data, `repr(C)`, no padding.
unsafe impl aya::Pod for FlowValue {}

/// Layout 0's counters: the first 35 of today's, at the same indices.
pub const COUNTERS: u32 = 35;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_of_layout_0_has_a_rule_and_shared_ones_are_unchanged() {
        let now = super::super::defs(1);
        for (name, def) in defs() {
            let rule = rule(&name).unwrap_or_else(|| panic!("layout 0's {name} has no rule"));
            if rule == Rule::Share {
                assert_eq!(now.get(&name), Some(&def), "{name} is shared but changed");
            } else {
                assert!(
                    now.contains_key(&name),
                    "{name} has no successor in layout 1"
                );
            }
        }
        if let Some(path) = std::env::var_os("EGRESS_V0_OBJECT") {
            let object = std::fs::read(path).unwrap();
            let real = crate::ebpf::defs_of(&object).unwrap();
            assert_eq!(super::super::text(&real), super::super::TEXTS[0]);
        }
        assert_eq!(defs()[names::COUNTERS].entries, COUNTERS);
        assert_eq!(
            defs()[names::FLOWS].value as usize,
            size_of::<FlowValue>(),
            "layout 0's flow value"
        );
    }
}
