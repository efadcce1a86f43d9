//! The one name hash both sides use: SipHash-1-3 keyed with a per-installation 128-bit key, chained
//! over the labels of a name from right to left.
//!
//! `h(suffix with labels l_k..l_n) = SipHash13(key, h(l_{k+1}..l_n) as 8 LE bytes ‖ len(l_k) ‖
//! lowercase(l_k))`, starting from 0 for the root. Chaining from the right makes every suffix's
//! hash a by-product of hashing the whole name, which is what wildcard matching needs; keying it
//! makes collisions with an allowed name impossible to compute without the key (a plain FNV-style
//! hash would let anyone who can make the node resolve a name they choose craft one).

/// SipHash-1-3 over a byte stream, written byte by byte (no allocation, no slices: the eBPF side
/// feeds it from bounded loops).
#[derive(Clone, Copy)]
pub struct Sip13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    tail: u64,
    ntail: u32,
    len: u32,
}

impl Sip13 {
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    #[inline(always)]
    pub fn write_u8(&mut self, b: u8) {
        self.tail |= (b as u64) << (8 * self.ntail);
        self.ntail += 1;
        self.len = self.len.wrapping_add(1);
        if self.ntail == 8 {
            let m = self.tail;
            self.v3 ^= m;
            self.round();
            self.v0 ^= m;
            self.tail = 0;
            self.ntail = 0;
        }
    }

    #[inline(always)]
    pub fn write_u64(&mut self, x: u64) {
        let b = x.to_le_bytes();
        let mut i = 0;
        while i < 8 {
            self.write_u8(b[i]);
            i += 1;
        }
    }

    #[inline(always)]
    pub fn finish(mut self) -> u64 {
        let m = ((self.len as u64 & 0xff) << 56) | self.tail;
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// Lowercases an ASCII letter; other bytes are unchanged (DNS compares case-insensitively for
/// ASCII only, RFC 4343).
#[inline(always)]
pub const fn ascii_lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b + 32 } else { b }
}

/// One step of the chain: the hash of `label` prepended to a suffix whose hash is `suffix`.
/// `label_byte(i)` yields byte `i` of the label, `i < len <= 63`.
#[inline(always)]
pub fn chain(k0: u64, k1: u64, suffix: u64, len: u8, label_byte: impl Fn(usize) -> u8) -> u64 {
    let mut s = Sip13::new(k0, k1);
    s.write_u64(suffix);
    s.write_u8(len);
    let mut i = 0;
    while i < 63 {
        if i >= len as usize {
            break;
        }
        s.write_u8(ascii_lower(label_byte(i)));
        i += 1;
    }
    s.finish()
}

/// The hash of a dotted name (trailing dot and case ignored) and of every suffix, for userspace:
/// returns `(full, proper_suffixes)` where `proper_suffixes[0]` is the name minus its first label.
#[cfg(any(test, feature = "testing", feature = "user"))]
pub fn name_hashes(k0: u64, k1: u64, name: &str) -> (u64, heapless_suffixes::Suffixes) {
    let name = name.strip_suffix('.').unwrap_or(name);
    let labels: heapless_suffixes::Labels<'_> = heapless_suffixes::split(name);
    let mut h = 0u64;
    let mut out = heapless_suffixes::Suffixes::default();
    let n = labels.len();
    for (i, label) in labels.iter().rev().enumerate() {
        let bytes = label.as_bytes();
        h = chain(k0, k1, h, bytes.len() as u8, |j| bytes[j]);
        if i + 1 < n {
            out.push(h);
        }
    }
    out.reverse();
    (h, out)
}

/// Small fixed-capacity helpers so `name_hashes` stays `no_std` without `alloc`.
#[cfg(any(test, feature = "testing", feature = "user"))]
pub mod heapless_suffixes {
    use crate::dns::MAX_LABELS;

    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct Suffixes {
        items: [u64; MAX_LABELS],
        len: usize,
    }

    impl Suffixes {
        pub(crate) fn push(&mut self, h: u64) {
            if self.len < MAX_LABELS {
                self.items[self.len] = h;
                self.len += 1;
            }
        }
        pub(crate) fn reverse(&mut self) {
            self.items[..self.len].reverse();
        }
        pub fn as_slice(&self) -> &[u64] {
            &self.items[..self.len]
        }
    }

    pub struct Labels<'a> {
        items: [&'a str; 128],
        len: usize,
    }

    impl<'a> Labels<'a> {
        pub fn len(&self) -> usize {
            self.len
        }
        pub fn is_empty(&self) -> bool {
            self.len == 0
        }
        pub fn iter(&self) -> core::slice::Iter<'_, &'a str> {
            self.items[..self.len].iter()
        }
    }

    pub fn split(name: &str) -> Labels<'_> {
        let mut l = Labels { items: [""; 128], len: 0 };
        for part in name.split('.') {
            if l.len < 128 {
                l.items[l.len] = part;
                l.len += 1;
            }
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming implementation agrees with a transcription of the paper's algorithm, for
    /// inputs that end on and off the 8-byte block boundary.
    #[test]
    fn matches_the_siphash13_reference_model() {
        for (k0, k1, input) in [
            (0u64, 0u64, &b""[..]),
            (1, 2, b"a"),
            (0x0706050403020100, 0x0f0e0d0c0b0a0908, b"abcdefgh"),
            (7, 9, b"the quick brown fox jumps over the lazy dog"),
        ] {
            let mut ours = Sip13::new(k0, k1);
            for &b in input {
                ours.write_u8(b);
            }
            assert_eq!(ours.finish(), model_sip13(k0, k1, input), "{input:?}");
        }
    }

    /// A direct transcription of the SipHash paper's algorithm with c=1, d=3.
    fn model_sip13(k0: u64, k1: u64, m: &[u8]) -> u64 {
        let (mut v0, mut v1, mut v2, mut v3) = (
            k0 ^ 0x736f6d6570736575,
            k1 ^ 0x646f72616e646f6d,
            k0 ^ 0x6c7967656e657261,
            k1 ^ 0x7465646279746573,
        );
        let round = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13) ^ *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16) ^ *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21) ^ *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17) ^ *v2;
            *v2 = v2.rotate_left(32);
        };
        let chunks = m.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            let mi = u64::from_le_bytes(c.try_into().unwrap());
            v3 ^= mi;
            round(&mut v0, &mut v1, &mut v2, &mut v3);
            v0 ^= mi;
        }
        let mut last = (m.len() as u64 & 0xff) << 56;
        for (i, &b) in rest.iter().enumerate() {
            last |= (b as u64) << (8 * i);
        }
        v3 ^= last;
        round(&mut v0, &mut v1, &mut v2, &mut v3);
        v0 ^= last;
        v2 ^= 0xff;
        for _ in 0..3 {
            round(&mut v0, &mut v1, &mut v2, &mut v3);
        }
        v0 ^ v1 ^ v2 ^ v3
    }

    #[test]
    fn suffix_hashes_are_the_hashes_of_the_suffixes() {
        let (full, suffixes) = name_hashes(1, 2, "a.b.Example.COM.");
        assert_eq!(full, name_hashes(1, 2, "a.b.example.com").0);
        assert_eq!(
            suffixes.as_slice(),
            &[
                name_hashes(1, 2, "b.example.com").0,
                name_hashes(1, 2, "example.com").0,
                name_hashes(1, 2, "com").0
            ]
        );
        assert_ne!(full, name_hashes(1, 3, "a.b.example.com").0, "the key matters");
        assert_ne!(name_hashes(1, 2, "ab.c").0, name_hashes(1, 2, "a.bc").0, "labels are delimited");
    }
}
