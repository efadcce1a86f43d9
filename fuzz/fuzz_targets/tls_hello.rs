//! The kernel's ClientHello reader and server-name conversion (`egress_common::tls`) on any
//! bytes: it never panics, stays inside its buffer, and what it reports holds: a name inside
//! the ClientHello's record, a record that ends inside the input, every proper prefix of an
//! accepted ClientHello `Incomplete`, and a wire name that the DNS hasher reads back whole or
//! refuses.
#![no_main]

use egress_common::{
    MAX_LABELS, dns,
    tls::{self, BUF, Hello, MAX_NAME, TlsError},
};
use libfuzzer_sys::fuzz_target;

fn parse(data: &[u8], len: usize) -> Result<Hello, TlsError> {
    let mut buf = Box::new([0u8; BUF]);
    let n = data.len().min(BUF);
    buf[..n].copy_from_slice(&data[..n]);
    let mut out = Hello::default();
    tls::client_hello(&buf, len, &mut out).map(|()| out)
}

fuzz_target!(|data: &[u8]| {
    if data.len() > BUF {
        assert!(
            parse(data, data.len()).is_err(),
            "more than the buffer is never accepted"
        );
        return;
    }
    let Ok(h) = parse(data, data.len()) else {
        return;
    };
    let end = usize::from(h.end);
    let (off, len) = (usize::from(h.sni_off), usize::from(h.sni_len));
    assert!(end <= data.len());
    assert!(len >= 1 && len <= MAX_NAME && off >= 9 && off + len <= end);
    for cut in [0, end / 3, end / 2, end - 1] {
        assert_eq!(
            parse(data, cut),
            Err(TlsError::Incomplete),
            "prefix of {cut}"
        );
    }
    let mut buf = Box::new([0u8; BUF]);
    buf[..data.len()].copy_from_slice(data);
    let mut wire = Box::new([0u8; dns::BUF]);
    let mut copy = [0u8; MAX_NAME + 1];
    if let Some(w) = tls::sni_to_wire(&buf, off, len, &mut wire, &mut copy) {
        let name = &data[off..off + len];
        let stripped = name.strip_suffix(b".").unwrap_or(name);
        assert_eq!(w, stripped.len() + 2);
        assert_eq!(&copy[..stripped.len()], stripped);
        if let Ok(q) = dns::name(&wire, w, 1, 2, &mut [0; MAX_LABELS], |_| false) {
            // Accepted by the hasher: the name is labels of 1..=63 bytes, none empty.
            assert!(
                stripped
                    .split(|b| *b == b'.')
                    .all(|l| (1..=63).contains(&l.len()))
            );
            assert_eq!(q.end, 12 + w + 4);
        }
    }
});
