//! Test fixtures: network namespaces joined by a veth pair, servers and clients that run inside
//! them, and the real `egress` agent attached to the client side.
//!
//! Every fixture gets its own namespace, interface and pin-directory names, so tests run in
//! parallel, and removes what it made on drop. Addresses can repeat across fixtures because each
//! lives in its own namespaces.

pub mod classic;
pub mod cluster;
pub mod dnsmsg;
pub mod harness;
pub mod live;
pub mod raw;

mod agent;
mod netns;
mod servers;
mod topology;

pub use agent::{
    Agent, BY_HAND, TestPins, egress, egress_bin, egress_ok_at, expire_by_hand, expire_pinned,
    http_get, kernel_has_tcx, learn_as, learn_by_hand, link_id, metric, old_bin, static_policy,
    wait_for,
};
pub use netns::{NetNs, sh, unique};
pub use servers::{Servers, echo_once};
pub use topology::{
    ALLOWED_V4, ALLOWED_V6, CLIENT_V4, CLIENT_V6, DENIED_V4, DENIED_V6, Topology, ip,
};
