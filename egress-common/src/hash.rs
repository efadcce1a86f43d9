//! The one name hash both sides use: SipHash-1-3 keyed with a per-installation 128-bit key, chained
//! over the labels of a name from right to left.
//!
//! `L(label) = SipHash13(key, len ‖ lowercase(label))` and
//! `h(l_k..l_n) = SipHash13(key, h(l_{k+1}..l_n) ‖ L(l_k))`, starting from 0 for the root.
//! Chaining from the right makes every suffix's hash a by-product of hashing the whole name,
//! which is what wildcard matching needs; hashing labels on their own first lets the kernel do
//! the expensive part in one left-to-right pass. Keying makes collisions with an allowed name
//! impossible to compute without the key (a plain FNV-style hash would let anyone who can make
//! the node resolve a name of their choosing craft one).

/// SipHash-1-3 over a stream of 64-bit words. Whole words only: no per-byte tail buffering,
/// so the eBPF side hashes without a data-dependent branch per byte (the verifier explores each
/// branch, and per-byte branches over a 255-byte name exceed its 1M-instruction budget).
#[derive(Clone, Copy)]
pub struct Sip13 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    words: u32,
}

impl Sip13 {
    #[inline(always)]
    pub const fn new(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            words: 0,
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

    /// Absorbs one little-endian 64-bit message word.
    #[inline(always)]
    pub fn write_u64(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
        self.words = self.words.wrapping_add(1);
    }

    /// SipHash finalization for a message of `8 * words` bytes.
    #[inline(always)]
    pub fn finish(mut self) -> u64 {
        let m = ((self.words as u64).wrapping_mul(8) & 0xff) << 56;
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

/// Lowercases the ASCII letters among the 8 bytes of `w` at once, without branches (DNS
/// compares case-insensitively for ASCII only, RFC 4343).
#[inline(always)]
pub const fn ascii_lower_word(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let low7 = w & !HIGH;
    // High bit set where the byte is >= 'A', resp. > 'Z' (no carries: 0x7f + 0x3f < 0x100).
    let ge_a = low7.wrapping_add((0x80 - b'A' as u64) * ONES);
    let gt_z = low7.wrapping_add((0x80 - b'Z' as u64 - 1) * ONES);
    let upper = ge_a & !gt_z & !w & HIGH;
    w | (upper >> 2)
}

/// `MASKS[r + 56]` keeps the first `r` bytes of a word (`r` clamped to 0..=8), for
/// `r = len - 8 * word` in -56..=63. A table instead of comparisons: LLVM turns any
/// "is this byte inside the label" arithmetic into a compare and a branch per byte, and the
/// verifier then explores every label length separately, past its 1M-instruction budget.
const MASKS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let r = i as i64 - 56;
        t[i] = if r <= 0 {
            0
        } else if r >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * r)) - 1
        };
        i += 1;
    }
    t
};

/// The hash of one label: SipHash-1-3 of its length and its lowercased bytes in 8 words of 8
/// little-endian bytes, zero-padded to 64 bytes. `label_byte(i)` is called for every `i < 64`;
/// bytes at `i >= len` are masked out, so they may be anything.
///
/// Always 8 words and no data-dependent branch (see [`MASKS`]).
#[inline(always)]
pub fn label_hash(k0: u64, k1: u64, len: u8, label_byte: impl Fn(usize) -> u8) -> u64 {
    let len = (len & 63) as usize;
    let mut s = Sip13::new(k0, k1);
    s.write_u64(len as u64);
    let mut w = 0;
    while w < 8 {
        let mut word = 0u64;
        let mut b = 0;
        while b < 8 {
            word |= (label_byte(w * 8 + b) as u64) << (8 * b);
            b += 1;
        }
        word &= MASKS[(len + 56 - 8 * w) & 127];
        s.write_u64(ascii_lower_word(word));
        w += 1;
    }
    s.finish()
}

/// One step of the suffix chain: the hash of a name whose first label hashes to `label` and
/// whose remaining suffix hashes to `suffix` (0 for the root).
#[inline(always)]
pub fn chain(k0: u64, k1: u64, suffix: u64, label: u64) -> u64 {
    let mut s = Sip13::new(k0, k1);
    s.write_u64(suffix);
    s.write_u64(label);
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
        let l = label_hash(k0, k1, bytes.len() as u8, |j| {
            bytes.get(j).copied().unwrap_or(0)
        });
        h = chain(k0, k1, h, l);
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
    use crate::MAX_LABELS;

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

    pub(crate) struct Labels<'a> {
        items: [&'a str; 128],
        len: usize,
    }

    impl<'a> Labels<'a> {
        pub(crate) fn len(&self) -> usize {
            self.len
        }
        pub(crate) fn iter(&self) -> core::slice::Iter<'_, &'a str> {
            self.items[..self.len].iter()
        }
    }

    pub(crate) fn split(name: &str) -> Labels<'_> {
        let mut l = Labels {
            items: [""; 128],
            len: 0,
        };
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

    /// The word-stream implementation agrees with a transcription of the SipHash paper's
    /// algorithm (c=1, d=3) on messages of whole words.
    #[test]
    fn matches_the_siphash13_reference_model() {
        for (k0, k1, words) in [
            (0u64, 0u64, vec![]),
            (1, 2, vec![0x61]),
            (0x0706050403020100, 0x0f0e0d0c0b0a0908, vec![1, 2, 3]),
            (7, 9, vec![u64::MAX; 9]),
        ] {
            let mut ours = Sip13::new(k0, k1);
            let mut bytes = Vec::new();
            for &w in &words {
                ours.write_u64(w);
                bytes.extend_from_slice(&w.to_le_bytes());
            }
            assert_eq!(ours.finish(), model_sip13(k0, k1, &bytes), "{words:?}");
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
    fn word_lowercasing_matches_bytewise_for_every_byte() {
        for b in 0..=255u8 {
            let w = u64::from_le_bytes([b, b'A', b'z', b, 0x80 | b'A', b'Z', b'@', b'[']);
            let expect = u64::from_le_bytes(w.to_le_bytes().map(|x| x.to_ascii_lowercase()));
            assert_eq!(ascii_lower_word(w), expect, "byte {b:#x}");
        }
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
        assert_ne!(
            full,
            name_hashes(1, 3, "a.b.example.com").0,
            "the key matters"
        );
        assert_ne!(
            name_hashes(1, 2, "ab.c").0,
            name_hashes(1, 2, "a.bc").0,
            "labels are delimited"
        );
        let long = "x".repeat(63);
        assert_ne!(name_hashes(1, 2, &long).0, name_hashes(1, 2, &long[..62]).0);
    }
}
