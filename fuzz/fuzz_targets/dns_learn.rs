//! The agent's DNS handling: hickory parses any bytes, the CNAME walk yields only addresses
//! that are in the message and only at the end of the chain from the question, and the
//! DNS-over-TCP reassembler stays within its bounds and only returns bytes it was given.
#![no_main]

use std::net::IpAddr;

use egress_user::learn::{Reassembler, chain_end};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a UDP answer.
    if let Ok(msg) = Message::from_vec(data)
        && let Some(end) = chain_end(&msg)
    {
        for (addr, _) in &end.addresses {
            let found = match addr {
                IpAddr::V4(a) => data.windows(4).any(|w| w == a.octets()),
                IpAddr::V6(a) => data.windows(16).any(|w| w == a.octets()),
            };
            assert!(found, "{addr} is not in the message");
        }
        assert!(end.name.len() <= 255 * 4, "names come from the message");
    }
    // As TCP segments: the first byte of each chunk picks a sequence offset (overlaps, gaps,
    // retransmissions), the rest is payload.
    let mut r = Reassembler::default();
    let mut seq = 1000u32;
    for chunk in data.chunks(97) {
        let (ctl, payload) = chunk.split_first().unwrap_or((&0, &[]));
        seq = seq.wrapping_add(u32::from(*ctl % 16)).wrapping_sub(8);
        for m in r.push([1; 16], [2; 16], [0, 53], seq, payload) {
            // A message is at most 65,535 bytes and made of bytes from the input.
            assert!(m.len() <= usize::from(u16::MAX));
            assert!(m.iter().all(|b| data.contains(b)));
        }
        seq = seq.wrapping_add(payload.len() as u32);
        let (streams, bytes) = r.held();
        assert!(
            streams <= 1 && bytes <= 65_537,
            "{streams} streams, {bytes} bytes"
        );
    }
});
