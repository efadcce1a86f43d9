//! The kernel's DNS walker, compiled for the host: it must never panic, always terminate, and
//! never yield an address that is not in the message.
#![no_main]

use egress_common::dns::{self, Address, BUF, MAX_LABELS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len().min(BUF);
    let mut buf = Box::new([0u8; BUF]);
    buf[..len].copy_from_slice(&data[..len]);
    let mut labels = [0u64; MAX_LABELS];
    let _ = dns::query(&buf, len, 1, 2, &mut labels);
    let Ok(q) = dns::question(&buf, len, 1, 2, &mut labels, |h| h & 1 == 0) else {
        return;
    };
    let mut got = Vec::new();
    let walked = dns::answers(
        &buf,
        len,
        &q,
        |off| dns::skip_name(&buf, len, off).ok(),
        |a, t| got.push((a, t)),
    );
    // A malformed answer teaches nothing, not even the records before the fault.
    if walked.is_err() {
        assert!(
            got.is_empty(),
            "a failed walk handed {} addresses to the sink",
            got.len()
        );
    }
    let msg = &data[..len];
    for (a, ttl) in got {
        assert!(ttl <= dns::MAX_TTL_S);
        match a {
            Address::V4(x) => assert!(msg.windows(4).any(|w| w == x)),
            Address::V6(x) => assert!(msg.windows(16).any(|w| w == x)),
        }
    }
});
