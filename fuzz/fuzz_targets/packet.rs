//! The header parser, compiled for the host: it must never panic, and an offset it reports must
//! lie inside the frame.
#![no_main]

use egress_common::packet::{Frame, parse_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Frame::Ip(p)) = parse_frame(data) {
        assert!(p.l4_off <= data.len() + 1024);
    }
});
