//! The DNS walker that runs in the kernel (TC ingress/egress) and, unchanged, on the host for
//! unit tests and fuzzing.
//!
//! It works on a fixed 4 KiB buffer (the eBPF side copies the UDP payload into a per-CPU
//! scratch map first); every index is masked into the buffer and checked against the message
//! length, and every loop has a constant bound. Nothing here allocates or panics.
//!
//! What it does:
//! - [`query`]: the transaction id and name hash of an outgoing query (for anti-spoofing);
//! - [`question`]: the id, name hash and suffix hashes of a response's question;
//! - [`answers`]: the A/AAAA records of a response's answer section, after checking that the
//!   whole section is well-formed (malformed input teaches nothing).

use crate::hash::{chain, label_hash};

/// Size of the buffer a message is parsed from: EDNS answers up to 4096 bytes fit.
pub const BUF: usize = 4096;
const MASK: usize = BUF - 1;
pub use crate::MAX_LABELS;
/// Answer records the kernel walks; the agent learns any beyond from its copy.
pub const MAX_ANSWERS: usize = 32;
/// Label steps when skipping an owner name. Owner names in answers are almost always a
/// compression pointer; a name of more labels fails the record (nothing is learned).
const MAX_NAME_STEPS: usize = 64;
/// TTLs above a day are clamped (a resolver bug or a poisoned cache should not allow an
/// address for years).
pub const MAX_TTL_S: u32 = 86_400;

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

/// Response codes (RFC 1035 §4.1.1) that the counters tell apart.
pub mod rcode {
    pub const NOERROR: u8 = 0;
    pub const SERVFAIL: u8 = 2;
    pub const NXDOMAIN: u8 = 3;
    pub const REFUSED: u8 = 5;
}
const HEADER_LEN: usize = 12;

/// Why a message teaches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsError {
    /// Shorter than its header, or a field runs past the end.
    Truncated,
    /// QR bit wrong for the direction, or opcode not QUERY.
    NotApplicable,
    /// A well-formed response with an error rcode (NXDOMAIN, SERVFAIL, ...): it carries no
    /// addresses to learn.
    ErrorResponse,
    /// Not exactly one question.
    QuestionCount,
    /// Compression or a reserved label type in the question, or a name over 255 bytes.
    BadName,
    /// More labels than [`MAX_LABELS`].
    TooManyLabels,
    /// A record runs past the end, has a wrong RDLENGTH for its type, or an owner name has no
    /// end within its bound.
    BadRecord,
    /// More answers than could possibly fit in the message.
    AbsurdCount,
}

/// Scratch space for the label hashes of a question. The caller provides it: the eBPF side
/// keeps it in a per-CPU map because the 512-byte stack has no room for it.
pub type Labels = [u64; MAX_LABELS];

/// A parsed question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Hash of the whole question name.
    pub full: u64,
    /// Whether the `on_suffix` callback accepted the hash of a proper suffix (for
    /// `a.b.example.com`: `com`, `example.com` or `b.example.com`). Suffix hashes are handed to
    /// a callback instead of being stored because the eBPF stack (512 bytes) has no room for
    /// them.
    pub suffix_matched: bool,
    /// The hash of the suffix the callback accepted (the shortest), when `suffix_matched`: the
    /// wildcard rule that allows the name.
    pub suffix: u64,
    /// The response code ([`rcode`]); 0 for queries.
    pub rcode: u8,
    pub ancount: u16,
    /// Offset of the first byte after the question.
    pub end: usize,
}

#[inline(always)]
fn byte(buf: &[u8; BUF], off: usize) -> u8 {
    buf[off & MASK]
}

#[inline(always)]
fn be16(buf: &[u8; BUF], off: usize) -> u16 {
    u16::from_be_bytes([byte(buf, off), byte(buf, off + 1)])
}

#[inline(always)]
fn be32(buf: &[u8; BUF], off: usize) -> u32 {
    u32::from_be_bytes([
        byte(buf, off),
        byte(buf, off + 1),
        byte(buf, off + 2),
        byte(buf, off + 3),
    ])
}

/// The header checks shared by queries and responses: returns (id, ancount, rcode). Error
/// rcodes are the caller's to judge: an error response is well-formed.
#[inline(always)]
fn header(buf: &[u8; BUF], len: usize, response: bool) -> Result<(u16, u16, u8), DnsError> {
    if !(HEADER_LEN..=BUF).contains(&len) {
        return Err(DnsError::Truncated);
    }
    let flags = be16(buf, 2);
    let qr = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0xf;
    if qr != response || opcode != 0 {
        return Err(DnsError::NotApplicable);
    }
    if be16(buf, 4) != 1 {
        return Err(DnsError::QuestionCount);
    }
    Ok((be16(buf, 0), be16(buf, 6), (flags & 0xf) as u8))
}

/// Parses the single question at offset 12: each label is hashed in one left-to-right pass,
/// then the label hashes are chained right to left so every suffix hash falls out.
///
/// Two loops instead of one nested pair keep the verifier's work linear in the number of
/// labels: the expensive per-label hashing is explored once per label, and only the cheap
/// chaining is explored once per possible label count.
#[inline(always)]
fn parse_question(
    buf: &[u8; BUF],
    len: usize,
    k0: u64,
    k1: u64,
    labels: &mut Labels,
    mut on_suffix: impl FnMut(u64) -> bool,
) -> Result<Question, DnsError> {
    let mut n = 0usize;
    let mut off = HEADER_LEN;
    let mut steps = 0;
    loop {
        if steps > MAX_LABELS {
            return Err(DnsError::TooManyLabels);
        }
        steps += 1;
        if off >= len {
            return Err(DnsError::Truncated);
        }
        let l = byte(buf, off);
        if l == 0 {
            off += 1;
            break;
        }
        if l & 0xc0 != 0 {
            return Err(DnsError::BadName);
        }
        if n >= MAX_LABELS {
            return Err(DnsError::TooManyLabels);
        }
        let start = off + 1;
        labels[n & (MAX_LABELS - 1)] = label_hash(k0, k1, l, |j| byte(buf, start + j));
        n += 1;
        off = start + l as usize;
        if off - HEADER_LEN > 255 {
            return Err(DnsError::BadName);
        }
    }
    if n == 0 {
        return Err(DnsError::BadName);
    }
    if off + 4 > len {
        return Err(DnsError::Truncated);
    }
    let mut q = Question {
        id: 0,
        full: 0,
        suffix_matched: false,
        suffix: 0,
        rcode: rcode::NOERROR,
        ancount: 0,
        end: off + 4,
    };
    let mut h = 0u64;
    let mut i = 0;
    while i < MAX_LABELS {
        if i >= n {
            break;
        }
        let idx = n - 1 - i;
        h = chain(k0, k1, h, labels[idx & (MAX_LABELS - 1)]);
        if idx >= 1 && !q.suffix_matched && on_suffix(h) {
            q.suffix_matched = true;
            q.suffix = h;
        }
        i += 1;
    }
    q.full = h;
    Ok(q)
}

/// The hash of a name written in wire form at offset 12 of `buf` (where a question name
/// starts), `wire_len` bytes with the root byte: the TLS server name goes through the question's
/// own hasher (`tls::sni_to_wire`), so both follow one set of rules. A name that ends before
/// `wire_len` (an empty label) is [`DnsError::BadName`].
#[inline(always)]
pub fn name(
    buf: &[u8; BUF],
    wire_len: usize,
    k0: u64,
    k1: u64,
    labels: &mut Labels,
    on_suffix: impl FnMut(u64) -> bool,
) -> Result<Question, DnsError> {
    let len = HEADER_LEN + wire_len + 4;
    let q = parse_question(buf, len, k0, k1, labels, on_suffix)?;
    if q.end != len {
        return Err(DnsError::BadName);
    }
    Ok(q)
}

/// An outgoing query: `(id, hash of the question name)`.
#[inline(always)]
pub fn query(
    buf: &[u8; BUF],
    len: usize,
    k0: u64,
    k1: u64,
    labels: &mut Labels,
) -> Result<(u16, u64), DnsError> {
    let (id, _, _) = header(buf, len, false)?;
    let q = parse_question(buf, len, k0, k1, labels, |_| false)?;
    Ok((id, q.full))
}

/// A response's question. Responses with another opcode or not exactly one question are
/// rejected; an error response is returned with its [`Question::rcode`] (and [`answers`]
/// refuses to walk it). `on_suffix` is offered the hash of each proper suffix of the name,
/// shortest first (`com`, `example.com`, `b.example.com`), until it returns true.
#[inline(always)]
pub fn question(
    buf: &[u8; BUF],
    len: usize,
    k0: u64,
    k1: u64,
    labels: &mut Labels,
    on_suffix: impl FnMut(u64) -> bool,
) -> Result<Question, DnsError> {
    let q = question_head(buf, len, k0, k1, labels, on_suffix)?;
    if !counts_fit(&q, len) {
        return Err(DnsError::AbsurdCount);
    }
    Ok(q)
}

/// [`question`] of a response whose first `len` bytes are all there is yet (the start of a
/// DNS-over-TCP answer that continues in later segments): the header and the question, without
/// checking the record count against a length that is not the message's.
#[inline(always)]
pub fn question_head(
    buf: &[u8; BUF],
    len: usize,
    k0: u64,
    k1: u64,
    labels: &mut Labels,
    on_suffix: impl FnMut(u64) -> bool,
) -> Result<Question, DnsError> {
    let (id, ancount, rcode) = header(buf, len, true)?;
    let mut q = parse_question(buf, len, k0, k1, labels, on_suffix)?;
    q.id = id;
    q.rcode = rcode;
    q.ancount = ancount;
    Ok(q)
}

/// Whether `q`'s answer count fits in a `len`-byte message: each record takes at least 11
/// bytes (1-byte root name + 10 bytes of fixed fields).
#[inline(always)]
pub fn counts_fit(q: &Question, len: usize) -> bool {
    q.ancount as usize * 11 <= len - q.end
}

/// An address record from an answer section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What [`answers`] found. Deliberately no per-record counts: a count carried through the
/// record loop differs on every path, so the verifier could never merge paths and would explore
/// each combination of record types (the sink counts instead, in a map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walk {
    /// More answers than [`MAX_ANSWERS`]: the rest were not walked.
    pub incomplete: bool,
}

/// Walks the answer section of `q`'s message. The section is validated whole first; only then
/// is `sink(address, ttl)` called for each IN A/AAAA record, so malformed input teaches nothing.
///
/// `skip(off)` skips an owner name: [`skip_name`] on the host; the eBPF side calls the same
/// function through a separately verified function (see `egress-ebpf/src/dns.rs`).
#[inline(always)]
pub fn answers(
    buf: &[u8; BUF],
    len: usize,
    q: &Question,
    skip: impl Fn(usize) -> Option<usize>,
    mut sink: impl FnMut(Address, u32),
) -> Result<Walk, DnsError> {
    // Whatever records an error response carries, it teaches nothing.
    if q.rcode != rcode::NOERROR {
        return Err(DnsError::ErrorResponse);
    }
    let walk = walk_records(buf, len, q, &skip, &mut |_, _| {})?;
    walk_records(buf, len, q, &skip, &mut sink)?;
    Ok(walk)
}

#[inline(always)]
fn walk_records(
    buf: &[u8; BUF],
    len: usize,
    q: &Question,
    skip: &impl Fn(usize) -> Option<usize>,
    sink: &mut impl FnMut(Address, u32),
) -> Result<Walk, DnsError> {
    let mut w = Walk::default();
    let mut off = q.end;
    let count = q.ancount as usize;
    if count > MAX_ANSWERS {
        w.incomplete = true;
    }
    let mut r = 0;
    while r < MAX_ANSWERS {
        if r >= count {
            break;
        }
        r += 1;
        off = skip(off).ok_or(DnsError::BadRecord)?;
        if off + 10 > len {
            return Err(DnsError::BadRecord);
        }
        let rtype = be16(buf, off);
        let class = be16(buf, off + 2);
        let ttl = be32(buf, off + 4).min(MAX_TTL_S);
        let rdlen = be16(buf, off + 8) as usize;
        let rdata = off + 10;
        if rdata + rdlen > len {
            return Err(DnsError::BadRecord);
        }
        off = rdata + rdlen;
        if class != CLASS_IN {
            continue;
        }
        match rtype {
            TYPE_A => {
                if rdlen != 4 {
                    return Err(DnsError::BadRecord);
                }
                let mut a = [0u8; 4];
                let mut i = 0;
                while i < 4 {
                    a[i] = byte(buf, rdata + i);
                    i += 1;
                }
                sink(Address::V4(a), ttl);
            }
            TYPE_AAAA => {
                if rdlen != 16 {
                    return Err(DnsError::BadRecord);
                }
                let mut a = [0u8; 16];
                let mut i = 0;
                while i < 16 {
                    a[i] = byte(buf, rdata + i);
                    i += 1;
                }
                sink(Address::V6(a), ttl);
            }
            _ => {}
        }
    }
    Ok(w)
}

/// Skips an owner name (labels, ending in the root or a compression pointer).
#[inline(always)]
pub fn skip_name(buf: &[u8; BUF], len: usize, mut off: usize) -> Result<usize, DnsError> {
    let mut steps = 0;
    while steps < MAX_NAME_STEPS {
        steps += 1;
        if off >= len {
            return Err(DnsError::BadRecord);
        }
        let l = byte(buf, off) as usize;
        if l == 0 {
            return Ok(off + 1);
        }
        match l & 0xc0 {
            0xc0 => return Ok(off + 2),
            0 => off += 1 + l,
            _ => return Err(DnsError::BadRecord),
        }
    }
    Err(DnsError::BadRecord)
}

#[cfg(test)]
mod tests;
