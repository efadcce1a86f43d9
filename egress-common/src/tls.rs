//! The TLS ClientHello reader that runs in the kernel (TC egress) and, unchanged, on the host for
//! unit tests, property tests and fuzzing.
//!
//! It works on a fixed 8 KiB buffer (the eBPF side copies the first bytes of a connection into a
//! per-CPU scratch map first); every index is masked into the buffer and checked against the
//! length, and every loop has a constant bound. Nothing here allocates or panics.
//!
//! What it does:
//! - [`client_hello`]: whether the bytes are a whole ClientHello, a proper prefix of one
//!   ([`TlsError::Incomplete`]), or something the server would not take as one; and where its
//!   `server_name` is;
//! - [`sni_to_wire`]: that name in DNS wire form, so the DNS question's own hasher
//!   ([`crate::dns::name`]) hashes it: one hash, one set of case and suffix rules;
//! - [`admit`]: where a TCP segment stands against the bytes already passed.
//!
//! The decisions (strictness, limits, why a prefix may pass) are in `docs/design.md`, *TLS
//! server names*.

/// Size of the buffer a ClientHello is read from. Browsers' post-quantum ClientHellos are about
/// 1.9 KB; one with a large PSK ticket stays well under this.
pub const BUF: usize = 8192;
const MASK: usize = BUF - 1;
/// Extensions walked; Chrome sends about 18 including GREASE. More is [`TlsError::Malformed`].
pub const MAX_EXTENSIONS: usize = 64;
/// The longest `host_name` RFC 6066 allows.
pub const MAX_NAME: usize = 255;
/// Offset of the first extension header's length... of the ClientHello body: record header (5)
/// and handshake header (4).
const BODY: usize = 9;
/// The `encrypted_client_hello` extension (draft-ietf-tls-esni).
pub const EXT_ECH: u16 = 0xfe0d;
const EXT_SERVER_NAME: u16 = 0;
const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// The largest TLS record (RFC 8446 §5.1: 2^14 bytes of plaintext).
const MAX_RECORD: usize = 16_384;

/// Why bytes are not (yet) a ClientHello egress admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsError {
    /// A proper prefix of a ClientHello: more bytes are needed.
    Incomplete,
    /// Not a TLS handshake record carrying one ClientHello (another protocol, SSLv2, a
    /// ClientHello fragmented over records).
    NotHello,
    /// A ClientHello a server would refuse, or one past egress's bounds: a length that does not
    /// add up, two `server_name` extensions, a name list of other than one `host_name`, more
    /// than [`MAX_EXTENSIONS`].
    Malformed,
    /// The ClientHello does not fit in [`BUF`].
    TooLong,
    /// A well-formed ClientHello without `server_name`.
    NoSni,
}

/// What [`client_hello`] found in a whole ClientHello.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hello {
    /// Offset and length of the `host_name` in the buffer.
    pub sni_off: u16,
    pub sni_len: u16,
    /// Offset just past the ClientHello's record.
    pub end: u16,
    /// [`hello_flag`] bits.
    pub flags: u8,
    pub _pad: u8,
}

/// Bits of [`Hello::flags`].
pub mod hello_flag {
    /// The ClientHello carries `encrypted_client_hello`: its `server_name` is the outer name.
    pub const ECH: u8 = 1;
}

#[inline(always)]
fn byte(buf: &[u8; BUF], off: usize) -> u8 {
    buf[opaque(off) & MASK]
}

/// `x`, through a volatile stack slot, so LLVM cannot prove the mask in [`byte`] redundant and
/// drop it: offsets here are sums of 16-bit lengths the verifier of Linux 6.1 does not bound
/// (it tracks no range through `be16`, nor from a comparison of two registers), and without
/// the mask it refuses the access ("math between map_value pointer and register with unbounded
/// min value is not allowed").
#[inline(always)]
fn opaque(x: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&x) }
}

#[inline(always)]
fn be16(buf: &[u8; BUF], off: usize) -> usize {
    u16::from_be_bytes([byte(buf, off), byte(buf, off + 1)]) as usize
}

#[inline(always)]
fn be24(buf: &[u8; BUF], off: usize) -> usize {
    ((byte(buf, off) as usize) << 16) | be16(buf, off + 1)
}

/// The record and handshake headers, checked on as many of their 9 bytes as `len` holds:
/// `Ok(record end)` once the record length is known, [`TlsError::Incomplete`] before.
#[inline(always)]
fn headers(buf: &[u8; BUF], len: usize) -> Result<usize, TlsError> {
    // Each check applies as soon as its byte is there, so every proper prefix of a ClientHello
    // is Incomplete and any other first bytes fail at the earliest byte that shows it.
    if len >= 1 && byte(buf, 0) != RECORD_HANDSHAKE {
        return Err(TlsError::NotHello);
    }
    // Record versions 3.0 ..= 3.4 (SSLv3 up to the TLS 1.3 value some stacks put there).
    if len >= 2 && byte(buf, 1) != 3 {
        return Err(TlsError::NotHello);
    }
    if len >= 3 && byte(buf, 2) > 4 {
        return Err(TlsError::NotHello);
    }
    if len < 5 {
        return Err(TlsError::Incomplete);
    }
    let record = be16(buf, 3);
    if !(4..=MAX_RECORD).contains(&record) {
        return Err(TlsError::NotHello);
    }
    if len >= 6 && byte(buf, 5) != HANDSHAKE_CLIENT_HELLO {
        return Err(TlsError::NotHello);
    }
    // One ClientHello filling exactly one record: a ClientHello fragmented over records (legal,
    // sent by no mainstream client) or coalesced with another message is refused, so the name
    // judged is the only one the server reads.
    if len >= BODY && 4 + be24(buf, 6) != record {
        return Err(TlsError::NotHello);
    }
    let end = 5 + record;
    if end > BUF {
        return Err(TlsError::TooLong);
    }
    if len < end {
        return Err(TlsError::Incomplete);
    }
    Ok(end)
}

/// Reads the ClientHello at the start of `buf[..len]` into `out`. `Ok` only for a whole,
/// well-formed ClientHello with exactly one `host_name`; bytes after its record (early data)
/// are not read. Results go to `out` rather than being returned in registers: the eBPF side
/// keeps `out` in its scratch map, and a flag carried through the extension loop in a register
/// would double the states the verifier explores.
#[inline(always)]
pub fn client_hello(buf: &[u8; BUF], len: usize, out: &mut Hello) -> Result<(), TlsError> {
    *out = Hello::default();
    if len > BUF {
        return Err(TlsError::TooLong);
    }
    let end = headers(buf, len)?;
    out.end = end as u16;
    // The fixed part (version, random, session id length) must fit the record, or the reads
    // below would look at bytes past it.
    if end < BODY + 2 + 32 + 1 {
        return Err(TlsError::Malformed);
    }
    // legacy_version 3.x, random (32).
    if byte(buf, BODY) != 3 {
        return Err(TlsError::Malformed);
    }
    let mut off = BODY + 2 + 32;
    // session id: at most 32 bytes.
    let sid = byte(buf, off) as usize;
    if sid > 32 {
        return Err(TlsError::Malformed);
    }
    off += 1 + sid;
    // cipher suites: an even, non-zero length.
    let suites = be16(buf, off);
    if suites < 2 || suites & 1 != 0 {
        return Err(TlsError::Malformed);
    }
    off += 2 + suites;
    // compression methods: at least one.
    if off >= end {
        return Err(TlsError::Malformed);
    }
    let methods = byte(buf, off) as usize;
    if methods == 0 {
        return Err(TlsError::Malformed);
    }
    off += 1 + methods;
    if off == end {
        return Err(TlsError::NoSni);
    }
    if off + 2 > end {
        return Err(TlsError::Malformed);
    }
    let block = be16(buf, off);
    off += 2;
    if off + block != end {
        return Err(TlsError::Malformed);
    }
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        i += 1;
        if off == end {
            break;
        }
        if off + 4 > end {
            return Err(TlsError::Malformed);
        }
        let kind = be16(buf, off) as u16;
        let ext = be16(buf, off + 2);
        let body = off + 4;
        if body + ext > end {
            return Err(TlsError::Malformed);
        }
        if kind == EXT_SERVER_NAME {
            server_name(buf, body, ext, out)?;
        } else if kind == EXT_ECH {
            out.flags |= hello_flag::ECH;
        }
        off = body + ext;
    }
    if off != end {
        return Err(TlsError::Malformed);
    }
    if out.sni_len == 0 {
        return Err(TlsError::NoSni);
    }
    Ok(())
}

/// The `server_name` extension at `body` (`ext` bytes): a list of exactly one `host_name` of
/// 1..=255 bytes (RFC 6066 §3; OpenSSL's `tls_parse_ctos_server_name` also takes only that).
#[inline(always)]
fn server_name(buf: &[u8; BUF], body: usize, ext: usize, out: &mut Hello) -> Result<(), TlsError> {
    // A second server_name extension (RFC 8446 §4.2: at most one of each type).
    if out.sni_len != 0 {
        return Err(TlsError::Malformed);
    }
    if ext < 5 || be16(buf, body) + 2 != ext || byte(buf, body + 2) != 0 {
        return Err(TlsError::Malformed);
    }
    let name = be16(buf, body + 3);
    if name == 0 || name > MAX_NAME || name + 5 != ext {
        return Err(TlsError::Malformed);
    }
    out.sni_off = (body + 5) as u16;
    out.sni_len = name as u16;
    Ok(())
}

/// `CLASS[b]`: 1 for a dot, 0 for a byte of a host name label (letters, digits, `-`, `_`),
/// 2 for anything else (NUL, `/`, `\`, `%`, space, bytes of 0x80 and above): such a name
/// equals no DNS host name, and under a wildcard (`*.example.com`) a front-end could read
/// `evil.test/.example.com` as another name. A table, not comparisons: the verifier explores
/// each branch, and a branch per byte over 255 bytes is past its budget (as `hash::MASKS`
/// explains).
const CLASS: [u8; 256] = {
    let mut t = [2u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'-' || c == b'_' {
            t[b] = 0;
        }
        b += 1;
    }
    t[b'.' as usize] = 1;
    t
};

/// Where [`sni_to_wire`] writes the name in `wire`: right after a DNS header, where
/// [`crate::dns::name`] reads a question name.
pub const WIRE_AT: usize = 12;

/// Writes the `len`-byte host name at `buf[off..]` in DNS wire form at `wire[WIRE_AT..]`, one
/// trailing dot dropped, and returns the wire length (labels and the root byte), or `None` for
/// an empty name or one with a byte no host name has (see [`CLASS`]). An empty label (`.a`, `a..b`) leaves a 0 length byte
/// inside the name, so the name ends early: [`crate::dns::name`] refuses a name that does not
/// end at the wire length, the hasher one with a label over 63 bytes or over 255 wire bytes.
/// Every byte is also copied to `copy` (the deny record's name).
///
/// Branch-free per byte: each byte is stored, the length byte of the label in progress is
/// rewritten with the label's length so far, and a dot moves the label start to itself.
#[inline(always)]
pub fn sni_to_wire(
    buf: &[u8; BUF],
    off: usize,
    len: usize,
    wire: &mut [u8; crate::dns::BUF],
    copy: &mut [u8; MAX_NAME + 1],
) -> Option<usize> {
    let mut len = len;
    if len == 0 || len > MAX_NAME {
        return None;
    }
    if byte(buf, off + len - 1) == b'.' {
        len -= 1;
    }
    if len == 0 {
        return None;
    }
    // Every index goes through `opaque` and a mask, as in `byte`: LLVM knows these stay
    // inside the buffers and would drop the masks the verifier of Linux 6.1 needs ("R1
    // unbounded memory access, make sure to bounds check any such access").
    const WMASK: usize = crate::dns::BUF - 1;
    let mut start = WIRE_AT;
    wire[opaque(start) & WMASK] = 0;
    let mut bad = 0u8;
    let mut i = 0;
    while i < MAX_NAME {
        if i >= len {
            break;
        }
        let b = byte(buf, off + i);
        copy[opaque(i) & MAX_NAME] = b;
        let class = CLASS[b as usize];
        bad |= class >> 1;
        let at = WIRE_AT + 1 + i;
        wire[opaque(at) & WMASK] = b;
        // A dot becomes the length byte of the next label (0 until a byte follows).
        let dot = (class & 1) as usize;
        start += dot * (at - start);
        wire[opaque(start) & WMASK] = (at - start) as u8;
        i += 1;
    }
    let root = WIRE_AT + 1 + len;
    wire[opaque(root) & WMASK] = 0;
    if bad != 0 {
        return None;
    }
    Some(len + 2)
}

/// Where a TCP segment carrying `len > 0` bytes from sequence number `seq` stands against a
/// ClientHello whose first byte is `base` and whose bytes before `next` have passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// It starts after `next`: bytes are missing before it (reordered, lost, forged, or
    /// before `base`). Dropped; the client sends it again once the gap is filled.
    Gap,
    /// Only bytes that already passed (a retransmission): it passes, nothing is read.
    Resent,
    /// It brings new bytes, from `skip` bytes into its payload.
    New { skip: u32 },
}

/// [`Segment`] of a segment at `seq` of `len > 0` bytes, with sequence arithmetic modulo 2^32
/// as TCP's (RFC 9293 §3.4).
#[inline(always)]
pub const fn admit(base: u32, next: u32, seq: u32, len: u32) -> Segment {
    let off = seq.wrapping_sub(base);
    let held = next.wrapping_sub(base);
    if off > held {
        return Segment::Gap;
    }
    // `off <= held <= BUF` and `len < 2^17`: no overflow.
    if off + len <= held {
        return Segment::Resent;
    }
    Segment::New { skip: held - off }
}

#[cfg(test)]
mod tests;
