//! The header parser, compiled for the host: it must never panic, and when it reports ports,
//! the transport header it read them from lies inside the frame. (`l4_off` is only used for
//! `Kind::Ports`; for other kinds it may point past the end, as the regression seed
//! `regression-ext-header-past-the-end` shows: IPv6 extension-header lengths that run past the
//! frame end the walk as `Unparsed`, which is fail-closed.)
#![no_main]

use egress_common::packet::{Frame, IPPROTO_TCP, Kind, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Frame::Ip(p)) = parse_frame(data)
        && p.transport.kind == Kind::Ports
    {
        let header = if p.transport.proto == IPPROTO_TCP {
            14
        } else {
            8
        };
        assert!(p.l4_off + header <= data.len(), "ports read past the frame");
    }
});
