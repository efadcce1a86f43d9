//! The egress agent as a library: the `egress` binary is a thin CLI over these modules, and the
//! integration tests use them to reach the pinned maps and the embedded eBPF object.

pub mod agent;
pub mod apply;
pub mod attach;
pub mod clock;
pub mod datapath;
pub mod ebpf;
pub mod events;
pub mod http;
pub mod layout;
pub mod learn;
pub mod metrics;
pub mod name;
pub mod pins;
pub mod policy;
pub mod presets;
pub mod records;
pub mod routes;
pub mod sockets;
pub mod status;
pub mod suggest;
pub mod warnings;
pub mod watch;
